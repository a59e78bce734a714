//! The seccomp BPF policy (see the module docs of `process`), compiled once by hand and
//! cross-checked against seccompiler's filters in the tests.
#![forbid(unsafe_code)]

use std::ffi::c_int;
use std::sync::OnceLock;

#[cfg(test)]
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::SandboxError;

/// The compiled seccomp programs (one per network setting), built once before any spawn.
pub(super) struct Filters {
    pub(super) policy_no_network: Vec<libc::sock_filter>,
    pub(super) policy_network: Vec<libc::sock_filter>,
}

static FILTERS: OnceLock<Result<Filters, String>> = OnceLock::new();

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH: u32 = 243 | 0x8000_0000 | 0x4000_0000;
/// x86_64: system call numbers with this bit are x32 calls.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `offsetof(struct seccomp_data, ...)`: nr, arch, and the low 32 bits of args[0].
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
#[cfg(target_endian = "little")]
const DATA_ARG0_LOW: u32 = 16;
#[cfg(target_endian = "big")]
const DATA_ARG0_LOW: u32 = 20;

/// What the filter does with one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// `clone`: `EPERM` with a namespace flag, else allowed.
    Clone,
    /// `socket`: `EPERM` unless the domain is `AF_UNIX`.
    Socket,
    Allow,
    Deny,
    NoSys,
    Kill,
}

/// Action blocks in program order (jumps only go forward).
const ACT_ORDER: [Act; 6] = [
    Act::Clone,
    Act::Socket,
    Act::Allow,
    Act::Deny,
    Act::NoSys,
    Act::Kill,
];

/// A jump target during layout: `n` instructions ahead, or an action block.
#[derive(Debug, Clone, Copy)]
enum Jump {
    Skip(usize),
    To(Act),
}

#[derive(Debug, Clone, Copy)]
struct Ins {
    code: u32,
    k: u32,
    jt: Jump,
    jf: Jump,
}

fn stmt(code: u32, k: u32) -> Ins {
    Ins {
        code,
        k,
        jt: Jump::Skip(0),
        jf: Jump::Skip(0),
    }
}

fn jump(code: u32, k: u32, jt: Jump, jf: Jump) -> Ins {
    Ins { code, k, jt, jf }
}

const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
const JGE: u32 = libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K;
const JSET: u32 = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
const RET: u32 = libc::BPF_RET | libc::BPF_K;

fn ret(k: u32) -> Ins {
    stmt(RET, k)
}

/// A binary search over the sorted special system calls, so that every number is decided
/// in a few comparisons (the kernel emulates the filter for every number when it is
/// installed, to cache the always-allowed ones: a linear chain makes that slow).
fn search_tree(entries: &[(u32, Act)]) -> Vec<Ins> {
    if entries.len() <= 3 {
        let mut code: Vec<Ins> = entries
            .iter()
            .map(|&(nr, act)| jump(JEQ, nr, Jump::To(act), Jump::Skip(0)))
            .collect();
        code.push(ret(libc::SECCOMP_RET_ALLOW));
        return code;
    }
    let (left, right) = entries.split_at(entries.len() / 2);
    let (left, right_first) = (search_tree(left), right.first().map_or(0, |e| e.0));
    let right = search_tree(right);
    let mut code = Vec::with_capacity(1 + left.len() + right.len());
    code.push(jump(
        JGE,
        right_first,
        Jump::Skip(left.len()),
        Jump::Skip(0),
    ));
    code.extend(left);
    code.extend(right);
    code
}

fn ns_clone_mask() -> u32 {
    [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
    ]
    .iter()
    .fold(0, |mask, flag| mask | flag.unsigned_abs())
}

/// The whole policy as one classic BPF program (see the module docs).
fn compile_policy(network: bool) -> Result<Vec<libc::sock_filter>, String> {
    let nr = |n: i64| u32::try_from(n).map_err(|_| format!("system call {n} out of range"));
    let mut entries = Vec::new();
    for n in always_denied() {
        entries.push((nr(n)?, Act::Deny));
    }
    entries.push((nr(libc::SYS_clone)?, Act::Clone));
    entries.push((nr(libc::SYS_clone3)?, Act::NoSys));
    if !network {
        entries.push((nr(libc::SYS_socket)?, Act::Socket));
    }
    entries.sort_unstable_by_key(|e| e.0);
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a system call has two rules".to_owned());
    }

    let errno = |e: c_int| libc::SECCOMP_RET_ERRNO | (e.unsigned_abs() & libc::SECCOMP_RET_DATA);
    let mut code = vec![
        stmt(LD_ABS, DATA_ARCH),
        // Another architecture's numbers mean other calls: kill.
        jump(JEQ, AUDIT_ARCH, Jump::Skip(1), Jump::Skip(0)),
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_ABS, DATA_NR),
    ];
    // x32 numbers would slip past the number checks: kill.
    #[cfg(target_arch = "x86_64")]
    code.push(jump(
        JSET,
        X32_SYSCALL_BIT,
        Jump::To(Act::Kill),
        Jump::Skip(0),
    ));
    code.extend(search_tree(&entries));
    let mut blocks = Vec::new();
    for act in ACT_ORDER {
        blocks.push((act, code.len()));
        match act {
            Act::Clone => code.extend([
                stmt(LD_ABS, DATA_ARG0_LOW),
                jump(JSET, ns_clone_mask(), Jump::To(Act::Deny), Jump::Skip(0)),
                ret(libc::SECCOMP_RET_ALLOW),
            ]),
            Act::Socket => code.extend([
                stmt(LD_ABS, DATA_ARG0_LOW),
                jump(
                    JEQ,
                    libc::AF_UNIX.unsigned_abs(),
                    Jump::To(Act::Allow),
                    Jump::To(Act::Deny),
                ),
            ]),
            Act::Allow => code.push(ret(libc::SECCOMP_RET_ALLOW)),
            Act::Deny => code.push(ret(errno(libc::EPERM))),
            Act::NoSys => code.push(ret(errno(libc::ENOSYS))),
            Act::Kill => code.push(ret(libc::SECCOMP_RET_KILL_PROCESS)),
        }
    }

    let offset = |at: usize, target: Jump| -> Result<u8, String> {
        let skip = match target {
            Jump::Skip(n) => n,
            Jump::To(act) => {
                let pos = blocks
                    .iter()
                    .find(|(a, _)| *a == act)
                    .map(|&(_, pos)| pos)
                    .ok_or("missing action block")?;
                pos.checked_sub(at + 1).ok_or("backward jump")?
            }
        };
        u8::try_from(skip).map_err(|_| "jump too far".to_owned())
    };
    let mut prog = Vec::with_capacity(code.len());
    for (at, ins) in code.iter().enumerate() {
        prog.push(libc::sock_filter {
            code: u16::try_from(ins.code).map_err(|_| "bad opcode")?,
            jt: offset(at, ins.jt)?,
            jf: offset(at, ins.jf)?,
            k: ins.k,
        });
    }
    if prog.len() > usize::from(libc::BPF_MAXINSNS as u16) {
        return Err("program too long".to_owned());
    }
    Ok(prog)
}

#[cfg(test)]
fn target_arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())
}

/// Syscalls denied for every tool.
fn always_denied() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_setsid,
        libc::SYS_setpgid,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
    ];
    calls.sort_unstable();
    calls.dedup();
    calls
}

#[cfg(test)]
fn build_policy(network: bool, arch: TargetArch) -> Result<BpfProgram, String> {
    let err = |e: seccompiler::BackendError| e.to_string();
    let mut rules = std::collections::BTreeMap::new();
    for nr in always_denied() {
        rules.insert(nr, Vec::new());
    }
    // clone(2) with any namespace flag (flags are the first argument on x86_64 and aarch64).
    let namespace_flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWCGROUP,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
    ];
    let mut clone_rules = Vec::new();
    for flag in namespace_flags {
        let flag = u64::from(flag.unsigned_abs());
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .map_err(err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    if !network {
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            u64::from(libc::AF_UNIX.unsigned_abs()),
        )
        .map_err(err)?;
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![cond]).map_err(err)?],
        );
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(test)]
fn build_clone3(arch: TargetArch) -> Result<BpfProgram, String> {
    let err = |e: seccompiler::BackendError| e.to_string();
    let mut rules = std::collections::BTreeMap::new();
    rules.insert(libc::SYS_clone3, Vec::new());
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        arch,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// x86_64: a system call number with the x32 bit set kills the process (the policy filter
/// matches numbers, and x32 numbers would slip past it).
#[cfg(all(test, target_arch = "x86_64"))]
fn build_x32_guard() -> [sock_filter; 6] {
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // offsetof(struct seccomp_data, nr) == 0, arch == 4.
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        // Other architectures are killed by the policy filter.
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            AUDIT_ARCH_X86_64,
            0,
            3,
        ),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

pub(super) fn filters() -> Result<&'static Filters, SandboxError> {
    let built = FILTERS.get_or_init(|| {
        Ok(Filters {
            policy_no_network: compile_policy(false)?,
            policy_network: compile_policy(true)?,
        })
    });
    built.as_ref().map_err(|reason| SandboxError::Seccomp {
        reason: reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions the programs use.
    fn eval(prog: &[libc::sock_filter], nr: u32, arch: u32, arg0: u64) -> u32 {
        let load = |k: u32| -> u32 {
            match k {
                DATA_NR => nr,
                DATA_ARCH => arch,
                16 => arg0 as u32,
                20 => (arg0 >> 32) as u32,
                _ => panic!("load at {k}"),
            }
        };
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let ins = prog[pc];
            pc += 1;
            let code = u32::from(ins.code);
            let cond = match code {
                LD_ABS => {
                    acc = load(ins.k);
                    continue;
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => {
                    acc &= ins.k;
                    continue;
                }
                c if c == libc::BPF_JMP | libc::BPF_JA => {
                    pc += ins.k as usize;
                    continue;
                }
                RET => return ins.k,
                JEQ => acc == ins.k,
                JGE => acc >= ins.k,
                c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => acc > ins.k,
                JSET => acc & ins.k != 0,
                _ => panic!("opcode {code:#x}"),
            };
            pc += usize::from(if cond { ins.jt } else { ins.jf });
        }
    }

    /// What the kernel returns for a stack of filters (newest first, lowest action wins).
    /// seccompiler's filter instructions as libc's (the same four fields).
    fn as_libc(prog: &[sock_filter]) -> Vec<libc::sock_filter> {
        prog.iter()
            .map(|f| libc::sock_filter {
                code: f.code,
                jt: f.jt,
                jf: f.jf,
                k: f.k,
            })
            .collect()
    }

    fn stacked(progs: &[&[libc::sock_filter]], nr: u32, arch: u32, arg0: u64) -> u32 {
        let mut best: Option<u32> = None;
        for prog in progs.iter().rev() {
            let ret = eval(prog, nr, arch, arg0);
            let rank = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if best.is_none_or(|b| rank(ret) < rank(b)) {
                best = Some(ret);
            }
        }
        best.unwrap()
    }

    /// The single hand-built program decides every system call exactly as the three
    /// seccompiler-built filters it replaces.
    #[test]
    fn compiled_policy_matches_the_seccompiler_filters() {
        let arch = target_arch().unwrap();
        let clone3 = build_clone3(arch).unwrap();
        let mut numbers: Vec<u32> = (0..=600).collect();
        numbers.extend([u32::MAX, 0x8000_0000, 0x4000_0000, 0x4000_0029, 0x4000_0038]);
        let mut args: Vec<u64> = vec![0, 1, 2, 10, 17, u64::MAX, 1 << 32, (1 << 32) | 1];
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWTIME,
            libc::CLONE_VM | libc::CLONE_VFORK,
        ] {
            let flag = u64::from(flag.unsigned_abs());
            args.extend([flag, flag | 17, flag | (1 << 40)]);
        }
        for network in [false, true] {
            let policy = build_policy(network, arch).unwrap();
            #[cfg(target_arch = "x86_64")]
            let x32 = build_x32_guard();
            #[cfg(target_arch = "x86_64")]
            let reference = [as_libc(&x32), as_libc(&clone3), as_libc(&policy)];
            #[cfg(not(target_arch = "x86_64"))]
            let reference = [as_libc(&clone3), as_libc(&policy)];
            let reference = reference.each_ref().map(Vec::as_slice);
            let ours = compile_policy(network).unwrap();
            assert!(ours.len() < 120, "{} instructions", ours.len());
            let setsid = u32::try_from(libc::SYS_setsid).unwrap();
            let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM.unsigned_abs();
            assert_eq!(eval(&ours, setsid, AUDIT_ARCH, 0), eperm);
            for audit_arch in [AUDIT_ARCH, 0x4000_0003] {
                for &nr in &numbers {
                    for &arg0 in &args {
                        assert_eq!(
                            eval(&ours, nr, audit_arch, arg0),
                            stacked(&reference, nr, audit_arch, arg0),
                            "network {network} arch {audit_arch:#x} nr {nr} arg0 {arg0:#x}"
                        );
                    }
                }
            }
        }
    }
}
