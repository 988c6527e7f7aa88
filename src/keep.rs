//! Keeping whole messages on disk (quarantine, receipt outbox): written
//! to a temporary name, synced, then renamed, so a reader never sees half a
//! file and a crash never leaves a partial one under the final name.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::spool::Spooled;

/// A file name safe for any identifier: letters, digits, `.` and `-`
/// kept, everything else `_`.
pub fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Write a file `dir/<safe name of id>.<ext>` atomically: `write` fills a
/// temporary file, which is synced and then renamed to the final name.
pub fn keep_with(
    dir: &Path,
    id: &str,
    ext: &str,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = safe_name(id);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    write(&mut f)?;
    let f = f.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    let dest = dir.join(format!("{name}.{ext}"));
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Write `parts` one after the other into `dir/<safe name>.eml`, atomically.
pub fn keep_sync(dir: &Path, id: &str, parts: &[&[u8]]) -> std::io::Result<PathBuf> {
    keep_with(dir, id, "eml", |f| {
        parts.iter().try_for_each(|p| f.write_all(p))
    })
}

/// [`keep_sync`] off the async runtime.
pub async fn keep(dir: &Path, id: &str, data: &[u8]) -> std::io::Result<PathBuf> {
    let (dir, id, data) = (dir.to_path_buf(), id.to_string(), data.to_vec());
    tokio::task::spawn_blocking(move || keep_sync(&dir, &id, &[&data]))
        .await
        .map_err(std::io::Error::other)?
}

/// [`keep`] for a message held as its header block and a body that may be
/// on disk: header, empty line and body streamed into the file, never read
/// whole into memory.
pub async fn keep_original(
    dir: &Path,
    id: &str,
    header: &[u8],
    body: &Spooled,
) -> std::io::Result<PathBuf> {
    let (dir, id, header, body) = (
        dir.to_path_buf(),
        id.to_string(),
        header.to_vec(),
        body.clone(),
    );
    tokio::task::spawn_blocking(move || {
        keep_with(&dir, &id, "eml", |f| {
            f.write_all(&header)?;
            f.write_all(b"\r\n")?;
            body.for_each_chunk::<std::io::Error>(|c| f.write_all(c))
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_and_files_whole() {
        assert_eq!(safe_name("a/b@c.d"), "a_b_c.d");
        let d = tempfile::tempdir().expect("tmp");
        let p = keep_sync(d.path(), "x@y", &[b"ab", b"cd"]).expect("keep");
        assert_eq!(std::fs::read(p).expect("read"), b"abcd");
    }
}
