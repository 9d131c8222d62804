//! Runs file operations with a user's filesystem credentials: on the calling (blocking) thread
//! only, `setfsuid`/`setfsgid` and the supplementary groups are switched to the user and back,
//! so permission checks and new files' ownership are the user's, while the other threads of the
//! agent keep root's.

use crate::users::User;

/// Errors switching credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("the agent runs as uid {agent} and cannot act as user '{user}'")]
    NotPermitted { agent: u32, user: String },
    #[error("switching to user '{user}': {source}")]
    Switch { user: String, source: std::io::Error },
}

/// Runs `f` on the current thread as `user`. Call from a blocking thread (`spawn_blocking`).
pub fn as_user<T>(user: &User, f: impl FnOnce() -> T) -> Result<T, CredsError> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid == user.uid {
        return Ok(f());
    }
    if euid != 0 {
        return Err(CredsError::NotPermitted { agent: euid, user: user.name.clone() });
    }
    let guard = Switched::to(user).map_err(|source| CredsError::Switch { user: user.name.clone(), source })?;
    let out = f();
    drop(guard);
    Ok(out)
}

/// The thread's credentials while switched; restored to root's on drop (also on panic).
struct Switched;

impl Switched {
    fn to(user: &User) -> std::io::Result<Self> {
        let groups: Vec<libc::gid_t> = user.groups.clone();
        // SAFETY: raw system calls (not the libc wrappers, which would change every thread)
        // that alter only this thread's credentials; `groups` outlives the call.
        let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let guard = Switched;
        // SAFETY: as above; setfsgid/setfsuid cannot fail in a way that harms memory safety and
        // return the previous id, which is root's and restored on drop.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, user.gid);
            libc::syscall(libc::SYS_setfsuid, user.uid);
        }
        Ok(guard)
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        let root_groups: [libc::gid_t; 1] = [0];
        // SAFETY: restores this thread's filesystem ids and groups to root's with the same raw,
        // thread-local system calls.
        unsafe {
            libc::syscall(libc::SYS_setfsuid, 0);
            libc::syscall(libc::SYS_setfsgid, 0);
            libc::syscall(libc::SYS_setgroups, 1usize, root_groups.as_ptr());
        }
    }
}
