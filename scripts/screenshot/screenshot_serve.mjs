// Drives headless Chromium against a running serve example: loads the page, uploads an image
// through the file input, waits for the probability bars, saves a screenshot.
//
//   node scripts/screenshot/screenshot_serve.mjs [--url http://127.0.0.1:8080/]
//       [--image tests/fixtures/images/chelsea.png] [--out /tmp/serve_screenshot.png]
//       [--chromium /usr/bin/chromium]
//
// Needs Debian's `chromium` and `npm install` in scripts/screenshot (playwright-core, which
// drives the system browser; it downloads no browser). scripts/screenshot_serve.sh starts the
// server and runs this. Exits 1 if the page shows an error or no bars appear.

import { chromium } from "playwright-core";

const opts = {
  url: "http://127.0.0.1:8080/",
  image: "tests/fixtures/images/chelsea.png",
  out: "/tmp/serve_screenshot.png",
  chromium: "/usr/bin/chromium",
};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, "");
  if (!(key in opts) || argv[i + 1] === undefined) {
    console.error(`usage: screenshot_serve.mjs [--url U] [--image FILE] [--out PNG] [--chromium BIN]`);
    process.exit(2);
  }
  opts[key] = argv[i + 1];
}

const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  // Root in a container has no user namespace sandbox.
  args: ["--no-sandbox", "--disable-gpu"],
});
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 680 }, deviceScaleFactor: 1 });
  page.on("console", (m) => console.log(`[page ${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console.log(`[page error] ${e.message}`));
  await page.goto(opts.url, { waitUntil: "load" });
  await page.setInputFiles("#file", opts.image);
  await page.waitForSelector('body[data-state="done"], body[data-state="error"]', { timeout: 60000 });
  const state = await page.getAttribute("body", "data-state");
  if (state !== "done") {
    console.error("the page shows an error:", await page.textContent("#status"));
    code = 1;
  } else {
    await page.waitForSelector("#results .row .fill", { timeout: 10000 });
    // Let the bars finish their 0.35 s width transition and the example thumbnails load.
    await page.waitForFunction(() =>
      [...document.querySelectorAll("#results .fill")].every((f) => f.getBoundingClientRect().width > 0) &&
      [...document.querySelectorAll(".examples img")].every((i) => i.complete));
    await page.waitForTimeout(600);
    const rows = await page.$$eval("#results .row", (rs) => rs.map((r) => r.innerText.replace(/\s+/g, " ")));
    console.log("top label:", await page.textContent("#top-label"));
    for (const r of rows) console.log("  bar:", r);
    console.log("status:", await page.textContent("#status"));
  }
  await page.screenshot({ path: opts.out, fullPage: true });
  console.log("screenshot:", opts.out);
} finally {
  await browser.close();
}
process.exit(code);
