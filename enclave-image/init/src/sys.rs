//! The system calls of the boot: mounts, module loading, reaping, power-off. Thin wrappers
//! that turn a failed call into an `io::Error` naming what was asked.
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;

/// proc, sys, dev and the in-memory /run and /tmp. The initramfs root is already in memory.
pub fn mount_early() -> io::Result<()> {
    for (source, target, fstype, data) in [
        ("proc", "/proc", "proc", ""),
        ("sysfs", "/sys", "sysfs", ""),
        ("devtmpfs", "/dev", "devtmpfs", "mode=0755"),
        ("tmpfs", "/run", "tmpfs", "mode=0755"),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777"),
    ] {
        mount(source, target, fstype, data)?;
    }
    std::fs::create_dir_all("/run/tessera")?;
    set_mode("/run/tessera", 0o700)
}

/// configfs, where the TSM reports interface lives (after the configfs module is loaded).
pub fn mount_configfs() -> io::Result<()> {
    mount("configfs", "/sys/kernel/config", "configfs", "")
}

fn mount(source: &str, target: &str, fstype: &str, data: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let c = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (source_c, target_c, fstype_c, data_c) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            if fstype == "devtmpfs" {
                libc::MS_NOSUID
            } else {
                flags
            },
            data_c.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        let error = io::Error::last_os_error();
        Err(io::Error::new(
            error.kind(),
            format!("mount {fstype} on {target}: {error}"),
        ))
    }
}

fn set_mode(path: &str, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Loads one kernel module from its file (finit_module). A module already loaded is fine.
pub fn load_module(path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    let params = CString::default();
    // SAFETY: the fd is open for the duration of the call and params is NUL-terminated.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(error)
    }
}

/// Reaps every child (PID 1 inherits orphans) until `pid` exits; returns its status.
pub fn reap_until(pid: u32) -> io::Result<std::process::ExitStatus> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if reaped as u32 == pid {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
    }
}

/// Flushes and powers the TD off. PID 1 must never return.
pub fn power_off() -> ! {
    // SAFETY: no arguments; sync and reboot do not touch our memory.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure (not PID 1, or no CAP_SYS_BOOT): halt here.
    loop {
        std::thread::park();
    }
}
