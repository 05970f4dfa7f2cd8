//! Polls the config path and reloads when any YAML file under it changes.
//!
//! The same approach as mesh-runtime's data-plane watcher (whose types are
//! tied to the monoio snapshot handle, so not reused directly): a poll of
//! `stat` calls sees editor renames, ConfigMap symlink swaps and new
//! subfolders without inotify bookkeeping. 200 ms keeps edits well within 1 s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::state::Controller;

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
const MAX_DEPTH: usize = 16;

/// One file as seen by `stat`: path, modified time, length, inode.
type FileStamp = (PathBuf, Option<SystemTime>, u64, u64);

/// What the files look like; `Err` when the path cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint(Result<Vec<FileStamp>, String>);

impl Fingerprint {
    pub fn of(path: &Path) -> Self {
        let mut files = Vec::new();
        Self(
            collect(path, 0, &mut files)
                .map(|()| {
                    files.sort();
                    files
                })
                .map_err(|e| e.to_string()),
        )
    }
}

fn collect(path: &Path, depth: usize, out: &mut Vec<FileStamp>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        if depth >= MAX_DEPTH {
            return Ok(());
        }
        for entry in std::fs::read_dir(path)? {
            let child = entry?.path();
            let name = child.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let Ok(child_meta) = std::fs::metadata(&child) else {
                continue; // vanished mid-listing: the next poll sees the settled state
            };
            let wanted = if child_meta.is_dir() {
                !name.starts_with('.')
            } else {
                name.ends_with(".yaml") || name.ends_with(".yml")
            };
            if wanted {
                collect(&child, depth + 1, out)?;
            }
        }
    } else {
        out.push((
            path.to_path_buf(),
            meta.modified().ok(),
            meta.len(),
            meta.ino(),
        ));
    }
    Ok(())
}

/// Runs forever: reloads `controller` whenever the fingerprint differs from
/// `baseline`, which must be taken *before* the load it describes (an edit
/// between that load and this task starting would otherwise go unnoticed).
pub async fn run(controller: Arc<Controller>, baseline: Fingerprint) {
    let path = controller.options().config.clone();
    let mut last = baseline;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Fingerprint::of(&path);
        if now != last {
            last = now;
            let controller = controller.clone();
            // Loading and translating is blocking file I/O and CPU.
            let _ = tokio::task::spawn_blocking(move || controller.reload()).await;
        }
    }
}
