//! The files a command keeps besides its input: the results CSV, the run journal, the locks, what the calls
//! spent of the quotas, and the external sort that keeps memory flat however long the list.

pub mod extsort;
pub mod journal;
pub mod lock;
pub mod results;
pub mod spent;
pub mod sync;

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so readers never see half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |e: std::io::Error| Error::write(path, "write it", e);
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp).map_err(fail)?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
