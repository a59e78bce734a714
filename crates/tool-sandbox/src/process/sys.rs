//! The `unsafe` of `process`: only the system calls that no well-kept safe API offers. Every
//! other submodule `#![forbid(unsafe_code)]` and makes its system calls through `rustix`
//! (with its `linux_raw` backend: direct system calls, no allocation, no locks, no `errno`,
//! and per-thread `set*id` that signal no other thread) or `std`.
//!
//! What stays here, and why (each block has a `SAFETY:` comment):
//!
//! - **`clone(CLONE_VM | CLONE_VFORK)`**, its entry trampoline and the **child stacks**
//!   (`mmap` with a guard page, `munmap`): no safe API runs code on another stack in this
//!   process's memory; nor the unshare probe's fork (a raw `clone(SIGCHLD)`, which runs no
//!   atfork handlers). `_exit`: `rustix` has it only in its unstable `runtime` module.
//! - **`execve`**: it takes raw `argv` and `envp` pointer arrays ([`ExecArgs`] owns the
//!   strings they point into).
//! - **Signal dispositions and the signal mask**: glibc's `sigaction`, which refuses glibc's
//!   reserved signals with `EINVAL`, and a raw `rt_sigprocmask`, which blocks all 64 signals
//!   (glibc's `sigprocmask` leaves its reserved ones unblocked). `rustix` offers these only as
//!   `unsafe` functions of its unstable `runtime` module.
//! - **`unshare`**: `rustix` marks it `unsafe` (unsharing `CLONE_FILES` can strand other
//!   threads' descriptors); [`unshare_namespaces`] lets only `CLONE_NEW*` flags through.
//! - **Landlock** (the ABI version query, `landlock_add_rule`, `landlock_restrict_self`) and
//!   **seccomp** (`SECCOMP_GET_ACTION_AVAIL`, `SECCOMP_SET_MODE_FILTER`): `rustix` has
//!   neither; the `landlock` crate builds rulesets in the parent (allocating) and does not
//!   expose the kernel's ABI version, and the child holds only the ruleset's descriptor.
//! - **Bringing up loopback** (`SIOCGIFFLAGS`, `SIOCSIFFLAGS` on an `ifreq`): no safe API.
//!
//! Invariants every function keeps:
//!
//! - Pointers given to the kernel come from references (`&CStr`, slices, locals) that
//!   outlive the call, with the length the kernel is told. Raw pointer arrays (`argv`,
//!   `envp`) are only built by [`ExecArgs`], which owns the strings they point into.
//! - What the children call (everything here but [`landlock_abi`],
//!   [`seccomp_filter_available`], [`fork_probe`]'s parent side, [`ExecArgs::new`] and
//!   [`ChildStack::new`]) is async-signal-safe: the child of `clone(CLONE_VM | CLONE_VFORK)`
//!   shares this process's memory while the parent thread is suspended, so these functions
//!   do not allocate, take no locks, cannot panic and report failures as `Err(errno)`.
//! - The child stacks are `mmap`ed with a guard page, unmapped only on drop, and a stack is
//!   never used by two children at once: [`ChildStack`] is neither `Send` nor `Sync`, and
//!   the thread that calls [`clone_vfork`] is suspended until the child execs or exits.
#![allow(unsafe_code)] // See the list above.

use std::ffi::{CStr, CString, c_char, c_int, c_long, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::io::Errno;
use rustix::thread::UnshareFlags;

/// The `errno` of the libc call that just failed (read as `std` reads it: no allocation).
fn last_errno() -> Errno {
    Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO)
}

/// The kernel's Landlock ABI version (`landlock_create_ruleset` with
/// `LANDLOCK_CREATE_RULESET_VERSION`); negative when Landlock is unsupported or disabled.
pub(super) fn landlock_abi() -> i64 {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null attr and size 0 only queries the
    // ABI version; no memory is read or written.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    }
}

/// Whether the kernel has seccomp filters and the `SECCOMP_RET_ERRNO` action.
pub(super) fn seccomp_filter_available() -> bool {
    // PR_GET_SECCOMP fails with EINVAL when the kernel lacks seccomp.
    if rustix::thread::secure_computing_mode().is_err() {
        return false;
    }
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from a valid pointer (a local that
    // outlives the call).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0u32,
            &raw const action,
        )
    };
    rc == 0
}

/// Forks (raw `clone(SIGCHLD)`: no atfork handlers) a child that exits with `probe()`.
/// `probe` must keep to raw system calls (`rustix`): the child is a copy of a process whose
/// other threads may hold locks. Returns the child's pid, to reap.
pub(super) fn fork_probe(probe: impl FnOnce() -> c_int) -> Result<i32, Errno> {
    // SAFETY: fork(2) without glibc's atfork handlers: the child gets its own copy of this
    // process's memory, in which `probe` makes raw system calls before `exit_now`; the
    // parent is unaffected.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            c_long::from(libc::SIGCHLD),
            0 as c_long,
            0 as c_long,
            0 as c_long,
            0 as c_long,
        )
    };
    match pid {
        0 => exit_now(probe()),
        pid if pid < 0 => Err(last_errno()),
        pid => i32::try_from(pid).map_err(|_| Errno::SRCH),
    }
}

/// `_exit(code)`: ends this process at once, without atexit handlers or unwinding.
pub(super) fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit makes the exit_group system call and touches no memory.
    unsafe { libc::_exit(code) }
}

/// `unshare(flags)` for namespace flags (`CLONE_NEW*`) only; anything else is `EINVAL`.
pub(super) fn unshare_namespaces(flags: c_int) -> Result<(), Errno> {
    let flags = UnshareFlags::from_bits_retain(flags.cast_unsigned());
    let namespaces = UnshareFlags::NEWCGROUP
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWTIME
        | UnshareFlags::NEWUSER
        | UnshareFlags::NEWUTS;
    if !namespaces.contains(flags) {
        return Err(Errno::INVAL);
    }
    // SAFETY: `rustix` marks unshare unsafe because unsharing CLONE_FILES can leave other
    // threads' descriptors out of this thread's table; only namespace flags get here.
    unsafe { rustix::thread::unshare_unsafe(flags) }
}

/// Brings the loopback interface `lo` up (`SIOCGIFFLAGS`, then `SIOCSIFFLAGS` with
/// `IFF_UP | IFF_RUNNING`) through a throw-away datagram socket.
pub(super) fn loopback_up() -> Result<(), Errno> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let sock = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: a zeroed ifreq is a valid empty request; the name "lo" fits with its NUL;
    // SIOCGIFFLAGS and SIOCSIFFLAGS read and write only this local struct, on a socket open
    // for both calls.
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as c_char;
        req.ifr_name[1] = b'o' as c_char;
        let mut rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &raw mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            rc = libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &raw const req);
        }
        rc
    };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `landlock_add_rule(ruleset, LANDLOCK_RULE_PATH_BENEATH, { access, parent })`.
pub(super) fn landlock_add_path_rule(
    ruleset: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    access: u64,
) -> Result<(), Errno> {
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: LANDLOCK_RULE_PATH_BENEATH (1) reads one packed attr from a valid local
    // pointer; both descriptors are borrowed, so open for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            1 as c_int,
            &raw const attr,
            0u32,
        )
    };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// `landlock_restrict_self(ruleset, 0)`.
pub(super) fn landlock_restrict_self(ruleset: BorrowedFd<'_>) -> Result<(), Errno> {
    // SAFETY: takes integers only (a borrowed, so open, descriptor).
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, 0, prog)`; `E2BIG` past 65535 instructions.
pub(super) fn seccomp_set_filter(prog: &[libc::sock_filter]) -> Result<(), Errno> {
    let Ok(len) = u16::try_from(prog.len()) else {
        return Err(Errno::TOOBIG);
    };
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` is a local pointing at `len` instructions of a live slice; the
    // kernel only reads and copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0u32,
            &raw const fprog,
        )
    };
    if rc == 0 { Ok(()) } else { Err(last_errno()) }
}

/// `sigaction(sig)`: the disposition of `sig` before the call (`sa_sigaction`: `SIG_DFL`,
/// `SIG_IGN` or a handler); with `reset`, `sig` is then `SIG_DFL` with no flags and an
/// empty mask. `EINVAL` for `SIGKILL`, `SIGSTOP` and the signals glibc reserves.
pub(super) fn sigaction(sig: c_int, reset: bool) -> Result<libc::sighandler_t, Errno> {
    // SAFETY: a zeroed sigaction is a valid value: SIG_DFL, no flags, an empty mask. The
    // call reads `dfl` (when resetting) and writes `old`, both locals; no handler is
    // installed, so no code of this process can be run by a signal.
    let (rc, old) = unsafe {
        let dfl: libc::sigaction = std::mem::zeroed();
        let mut old: libc::sigaction = std::mem::zeroed();
        let new = if reset {
            &raw const dfl
        } else {
            std::ptr::null()
        };
        (libc::sigaction(sig, new, &raw mut old), old)
    };
    if rc == 0 {
        Ok(old.sa_sigaction)
    } else {
        Err(last_errno())
    }
}

/// `rt_sigprocmask(SIG_SETMASK, mask)` (the kernel's 64-bit sigset, every signal glibc
/// reserves included): the previous mask.
pub(super) fn set_signal_mask(mask: u64) -> Result<u64, Errno> {
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads and writes one 8-byte kernel sigset each, from and to
    // valid locals.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const mask,
            &raw mut old,
            size_of::<u64>(),
        )
    };
    if rc == 0 { Ok(old) } else { Err(last_errno()) }
}

/// `argv` and `envp` for [`execve`]: NULL-terminated pointer arrays into strings owned by
/// this value (moving it does not move the strings' bytes). Built by the parent before
/// `clone`. Not `Send` (raw pointers).
pub(super) struct ExecArgs {
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    _strings: Vec<CString>,
}

impl ExecArgs {
    /// The first `argc` strings are the arguments, the rest the environment.
    pub(super) fn new(strings: Vec<CString>, argc: usize) -> Self {
        let argc = argc.min(strings.len());
        let pointers = |s: &[CString]| -> Vec<*const c_char> {
            s.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        Self {
            argv: pointers(&strings[..argc]),
            envp: pointers(&strings[argc..]),
            _strings: strings,
        }
    }
}

/// `execve(path, argv, envp)`: returns only on failure, with the errno.
pub(super) fn execve(path: &CStr, args: &ExecArgs) -> Errno {
    // SAFETY: `path` is NUL-terminated; argv and envp are NULL-terminated arrays of
    // NUL-terminated strings owned by `args` (see `ExecArgs`), alive for the call.
    unsafe {
        libc::execve(path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
    }
    last_errno()
}

/// An mmap'd stack for a `clone` child with a guard page below it. Neither `Send` nor
/// `Sync` (raw pointer): only the thread that made it runs children on it.
pub(super) struct ChildStack {
    base: *mut c_void,
    len: usize,
}

impl ChildStack {
    /// `bytes` of stack plus one guard page.
    pub(super) fn new(bytes: usize) -> io::Result<Self> {
        // SAFETY: sysconf takes an integer; the mapping is anonymous and private, at an
        // address of the kernel's choice; mprotect makes the lowest page of that mapping
        // the guard, and the mapping is unmapped if that fails.
        unsafe {
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap_or(4096);
            let len = bytes + page;
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Self { base, len };
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// The initial stack pointer (the stack grows down; page aligned).
    fn top(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no child uses it any more
        // (each has exec'd or exited when its `clone_vfork` returned).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// What [`trampoline`] runs: `entry(arg)`.
struct Entry<'a, T> {
    entry: fn(&T) -> c_int,
    arg: &'a T,
}

/// The clone entry point: runs `entry(arg)` on the child stack, then `_exit`s with its
/// value.
extern "C" fn trampoline<T>(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `&Entry<T>` that `clone_vfork` passed to clone, on the stack of
    // the thread that called it; that thread is suspended (CLONE_VFORK) until this child
    // execs or exits, so the entry and its argument outlive every use here.
    let call = unsafe { &*arg.cast::<Entry<'_, T>>() };
    exit_now((call.entry)(call.arg))
}

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)`, as glibc's posix_spawn: the child runs
/// `entry(arg)` on `stack` sharing this process's memory, then `_exit`s with its value
/// unless it exec'd; this thread resumes once the child has exec'd or exited. Returns the
/// child's pid.
///
/// `entry` must keep to what the module's invariants allow the child: raw system calls
/// (`rustix`, the functions of this module), no allocation, no locks, no panics. `stack`
/// must not be the one the caller runs on (the namespaced chain uses one stack per level).
pub(super) fn clone_vfork<T>(
    stack: &ChildStack,
    entry: fn(&T) -> c_int,
    arg: &T,
) -> Result<i32, Errno> {
    let call = Entry { entry, arg };
    // SAFETY: the child runs `trampoline::<T>` on its own mapped stack with a pointer to
    // `call`, which this suspended thread keeps alive; `ChildStack` is not `Sync`, so no
    // other thread runs a child on it meanwhile.
    let pid = unsafe {
        libc::clone(
            trampoline::<T>,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw const call).cast_mut().cast(),
        )
    };
    if pid < 0 { Err(last_errno()) } else { Ok(pid) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshare_refuses_flags_other_than_namespaces() {
        for flags in [
            libc::CLONE_FILES,
            libc::CLONE_FS,
            libc::CLONE_NEWNS | libc::CLONE_VM,
        ] {
            assert_eq!(unshare_namespaces(flags), Err(Errno::INVAL), "{flags:#x}");
        }
    }
}
