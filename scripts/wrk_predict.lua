-- wrk script: POST an image as the raw body of /predict.
--   IMAGE=tests/fixtures/images/chelsea.png wrk -t1 -c8 -d20s --latency -s scripts/wrk_predict.lua http://127.0.0.1:8080/predict
local path = os.getenv("IMAGE") or "tests/fixtures/images/chelsea.png"
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
