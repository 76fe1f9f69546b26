//! An export file that appears under its name only when complete: written to a
//! hidden file beside it, renamed at the end, removed if the export fails.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::io::{AsyncWriteExt, BufWriter};

/// A file being written.
pub struct Output {
    path: PathBuf,
    partial: PathBuf,
    file: BufWriter<tokio::fs::File>,
    committed: bool,
}

impl Output {
    /// Start writing what will become `path` (an existing file is replaced at the end).
    pub async fn create(path: &Path) -> anyhow::Result<Output> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name", path.display()))?;
        let partial = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        Ok(Output {
            path: path.to_path_buf(),
            partial,
            file: BufWriter::with_capacity(256 * 1024, file),
            committed: false,
        })
    }

    /// Append bytes.
    pub async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(bytes)
            .await
            .with_context(|| format!("writing {}", self.partial.display()))
    }

    /// Flush, sync and give the file its name.
    pub async fn commit(mut self) -> anyhow::Result<()> {
        self.file.flush().await.context("flushing the export")?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .context("syncing the export")?;
        tokio::fs::rename(&self.partial, &self.path)
            .await
            .with_context(|| format!("renaming to {}", self.path.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
