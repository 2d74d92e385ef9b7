//! The zip archive `torch.save` writes, read through ONE opened file handle (never reopened by
//! path): the end-of-central-directory record (zip64 too, which torch always writes), the
//! central directory, and each entry's local header only when its data is wanted.
//!
//! Only stored (uncompressed, unencrypted) entries are read, which is all torch writes. Every
//! size and offset is checked against the file's length before anything is allocated or read,
//! and the directory may hold at most [`MAX_ENTRIES`] entries.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

/// The most entries a torch archive may have (a ViT-Huge with Adam's state: about 2,000).
pub(super) const MAX_ENTRIES: u64 = 100_000;
/// The largest central directory read.
const MAX_DIRECTORY_BYTES: u64 = 64 << 20;

/// One entry of the central directory.
#[derive(Clone, Copy, Debug)]
struct Entry {
    method: u16,
    flags: u16,
    compressed: u64,
    size: u64,
    local_header: u64,
}

/// An opened archive: the file and its directory.
#[derive(Debug)]
pub(super) struct Archive {
    file: File,
    len: u64,
    entries: HashMap<String, Entry>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

const TRUNCATED: &str = "a truncated or corrupt zip archive";

/// Reads exactly `buf.len()` bytes at `offset` (checked against `len` first).
fn read_at(file: &File, len: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
    let end = offset.checked_add(buf.len() as u64);
    if end.is_none_or(|e| e > len) {
        return Err(format!(
            "{TRUNCATED}: {} bytes at offset {offset} are past its end ({len} bytes)",
            buf.len()
        ));
    }
    let mut f = file;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(buf))
        .map_err(|e| format!("cannot read {} bytes at offset {offset}: {e}", buf.len()))
}

impl Archive {
    /// Reads the directory of the archive `file` (of `len` bytes).
    pub fn open(file: File, len: u64) -> Result<Archive, String> {
        // The end-of-central-directory record: 22 bytes and a comment of up to 65535.
        let tail_len = len.min(22 + 65_535);
        let mut tail = vec![0u8; tail_len as usize];
        read_at(&file, len, len - tail_len, &mut tail)?;
        let eocd = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| tail[i..].starts_with(b"PK\x05\x06"))
            .ok_or_else(|| {
                "not a readable zip archive (torch.save's format): no end-of-central-directory \
                 record; truncated?"
                    .to_string()
            })?;
        let t = &tail[eocd..];
        let bad = || TRUNCATED.to_string();
        let mut count = u64::from(u16_at(t, 10).ok_or_else(bad)?);
        let mut dir_size = u64::from(u32_at(t, 12).ok_or_else(bad)?);
        let mut dir_offset = u64::from(u32_at(t, 16).ok_or_else(bad)?);
        let eocd_pos = len - tail_len + eocd as u64;
        // A zip64 locator just before it points to the zip64 record with 64-bit fields.
        if eocd >= 20 && tail[eocd - 20..].starts_with(b"PK\x06\x07") {
            let rec = u64_at(&tail, eocd - 20 + 8).ok_or_else(bad)?;
            let mut z = [0u8; 56];
            read_at(&file, len, rec, &mut z)?;
            if !z.starts_with(b"PK\x06\x06") {
                return Err(format!("{TRUNCATED}: no zip64 record at offset {rec}"));
            }
            count = u64_at(&z, 32).ok_or_else(bad)?;
            dir_size = u64_at(&z, 40).ok_or_else(bad)?;
            dir_offset = u64_at(&z, 48).ok_or_else(bad)?;
        }
        if dir_offset
            .checked_add(dir_size)
            .is_none_or(|e| e > eocd_pos)
        {
            return Err(format!(
                "{TRUNCATED}: its directory ({dir_size} bytes at offset {dir_offset}) does not \
                 fit in the file"
            ));
        }
        if count > MAX_ENTRIES {
            return Err(format!(
                "a zip archive of {count} entries; at most {MAX_ENTRIES} are read"
            ));
        }
        if count.saturating_mul(46) > dir_size || dir_size > MAX_DIRECTORY_BYTES {
            return Err(format!(
                "{TRUNCATED}: {count} entries in a {dir_size}-byte directory"
            ));
        }
        let mut dir = vec![0u8; dir_size as usize];
        read_at(&file, len, dir_offset, &mut dir)?;
        let mut entries = HashMap::with_capacity(count as usize);
        let mut at = 0usize;
        for _ in 0..count {
            if !dir.get(at..).is_some_and(|d| d.starts_with(b"PK\x01\x02")) {
                return Err(format!("{TRUNCATED}: a bad directory entry at offset {at}"));
            }
            let field16 = |o: usize| u16_at(&dir, at + o).ok_or_else(bad);
            let field32 = |o: usize| u32_at(&dir, at + o).ok_or_else(bad);
            let flags = field16(8)?;
            let method = field16(10)?;
            let mut compressed = u64::from(field32(20)?);
            let mut size = u64::from(field32(24)?);
            let name_len = usize::from(field16(28)?);
            let extra_len = usize::from(field16(30)?);
            let comment_len = usize::from(field16(32)?);
            let mut local_header = u64::from(field32(42)?);
            let name_at = at + 46;
            let extra_at = name_at + name_len;
            let next = extra_at + extra_len + comment_len;
            if next > dir.len() {
                return Err(format!(
                    "{TRUNCATED}: a directory entry runs past the directory"
                ));
            }
            let name = std::str::from_utf8(&dir[name_at..extra_at])
                .map_err(|_| "a zip entry whose name is not UTF-8".to_string())?
                .to_string();
            // The zip64 extra field: 64-bit values for the fields saturated above.
            let mut x = extra_at;
            while x + 4 <= extra_at + extra_len {
                let id = u16_at(&dir, x).ok_or_else(bad)?;
                let n = usize::from(u16_at(&dir, x + 2).ok_or_else(bad)?);
                if x + 4 + n > extra_at + extra_len {
                    break;
                }
                if id == 1 {
                    let mut f = x + 4;
                    let end = x + 4 + n;
                    for v in [&mut size, &mut compressed, &mut local_header] {
                        if *v == u64::from(u32::MAX) && f + 8 <= end {
                            *v = u64_at(&dir, f).ok_or_else(bad)?;
                            f += 8;
                        }
                    }
                }
                x += 4 + n;
            }
            let e = Entry {
                method,
                flags,
                compressed,
                size,
                local_header,
            };
            if entries.insert(name.clone(), e).is_some() {
                return Err(format!("the zip archive holds {name} twice"));
            }
            at = next;
        }
        Ok(Archive { file, len, entries })
    }

    /// Every entry's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Where entry `name`'s data starts in the file, after checking that it is stored
    /// uncompressed and that its `size` bytes lie inside the file.
    pub fn data_offset(&self, name: &str) -> Result<(u64, u64), String> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| format!("the zip archive has no entry {name}"))?;
        if e.method != 0 || e.compressed != e.size {
            return Err(format!(
                "zip entry {name} is compressed (method {}); torch.save stores entries \
                 uncompressed, and only those are read",
                e.method
            ));
        }
        if e.flags & 1 != 0 {
            return Err(format!("zip entry {name} is encrypted"));
        }
        let mut local = [0u8; 30];
        read_at(&self.file, self.len, e.local_header, &mut local)?;
        if !local.starts_with(b"PK\x03\x04") {
            return Err(format!(
                "{TRUNCATED}: no local header for {name} at offset {}",
                e.local_header
            ));
        }
        let n = u64::from(u16_at(&local, 26).unwrap_or(0));
        let x = u64::from(u16_at(&local, 28).unwrap_or(0));
        let start = e.local_header + 30 + n + x;
        if start.checked_add(e.size).is_none_or(|end| end > self.len) {
            return Err(format!(
                "{TRUNCATED}: zip entry {name} declares {} bytes at offset {start}, past the \
                 end of the file ({} bytes)",
                e.size, self.len
            ));
        }
        Ok((start, e.size))
    }

    /// Reads `buf.len()` bytes at `offset` of entry `name`'s data (whose start is `start`, as
    /// [`Archive::data_offset`] gave it).
    pub fn read(&self, start: u64, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        let at = start
            .checked_add(offset)
            .ok_or_else(|| TRUNCATED.to_string())?;
        read_at(&self.file, self.len, at, buf)
    }

    /// Reads all of entry `name`, at most `max` bytes.
    pub fn read_entry(&self, name: &str, max: u64) -> Result<Vec<u8>, String> {
        let (start, size) = self.data_offset(name)?;
        if size > max {
            return Err(format!(
                "zip entry {name} is {size} bytes; at most {max} are read"
            ));
        }
        let mut buf = vec![0u8; size as usize];
        self.read(start, 0, &mut buf)?;
        Ok(buf)
    }
}
