//! Entering a pod's network namespace to make sockets there.
//!
//! A socket belongs to the network namespace of the thread that created it,
//! for its whole life; `setns` changes only the calling thread. So a worker
//! thread enters the pod's namespace, creates (and binds) the socket, and
//! returns to its own namespace before doing anything else — the socket
//! keeps working in the pod's namespace while the thread serves everyone.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// An open network namespace file (e.g. `/run/netns/pod-a`).
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: File,
}

thread_local! {
    /// The thread's own namespace, opened the first time it leaves it.
    static HOME: Result<File, String> = File::open("/proc/thread-self/ns/net")
        .map_err(|e| format!("cannot open /proc/thread-self/ns/net: {e}"));
}

impl NetNs {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open network namespace {}: {e}", path.display()),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the calling thread inside this namespace, then returns
    /// the thread to its own namespace (also when `f` fails).
    pub fn run<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        HOME.with(|home| {
            let home = home.as_ref().map_err(|e| io::Error::other(e.clone()))?;
            set_netns(&self.file).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot enter network namespace {}: {e}",
                        self.path.display()
                    ),
                )
            })?;
            let result = f();
            if let Err(e) = set_netns(home) {
                // A worker left in a pod's namespace would open every later
                // socket there: not recoverable, stop the process loudly.
                eprintln!("ztunnel: cannot return to the worker's network namespace: {e}");
                std::process::abort();
            }
            result
        })
    }
}

fn set_netns(file: &File) -> io::Result<()> {
    // SAFETY: setns takes a valid open fd (borrowed from `file` for the call)
    // and only changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
