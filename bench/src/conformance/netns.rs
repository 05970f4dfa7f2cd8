//! A private network namespace for the run, so the gateway can bind port 80 (and every
//! other port) without touching the host: unshare(CLONE_NEWUSER | CLONE_NEWNET) in this
//! process, map our uid to root, bring `lo` up. Children inherit the namespace and it
//! vanishes with the last process in it.

use anyhow::{bail, Context};

/// Must run before any thread is spawned: the kernel refuses CLONE_NEWUSER for a
/// multi-threaded process.
pub fn enter_private_netns() -> anyhow::Result<()> {
    // SAFETY: plain libc calls without pointers; getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    // SAFETY: unshare only changes this process's namespaces; no memory is shared.
    let user_ns = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0;
    if user_ns {
        // Without "deny" an unprivileged process may not write gid_map.
        let _ = std::fs::write("/proc/self/setgroups", "deny");
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))
            .context("writing /proc/self/uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))
            .context("writing /proc/self/gid_map")?;
    } else {
        let user_err = std::io::Error::last_os_error();
        // Real root without user namespaces: a network namespace alone is enough.
        // SAFETY: as above.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!(
                "cannot create a private network namespace (user namespaces: {user_err}; \
                 netns: {}); run with --no-netns on a host where port 80 is free",
                std::io::Error::last_os_error()
            );
        }
    }
    bring_loopback_up()
}

/// `struct ifreq` restricted to the flags member of its union (40 bytes on Linux).
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn bring_loopback_up() -> anyhow::Result<()> {
    // SAFETY: socket() takes no pointers; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!(
            "socket for SIOCSIFFLAGS: {}",
            std::io::Error::last_os_error()
        );
    }
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write a `struct ifreq`; IfReqFlags has the
    // same size and layout for the name and flags members the kernel touches.
    let result = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut req) != 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing the fd we opened above.
    unsafe { libc::close(fd) };
    result.context("bringing lo up")
}
