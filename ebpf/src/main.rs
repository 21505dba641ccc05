//! cgroup `connect4`/`connect6` steer connects aimed at a held Service's ClusterIP:port to
//! this node's agent; `getpeername4`/`getpeername6` give the application back the ClusterIP
//! it asked for. For a Service with an `activity` trigger, the connects are also counted
//! (steered or not) and each socket is tracked as open until `sock_release` sees it go.
//! Every program returns 1 (allow) whatever happens: a bug here must never stop a connect
//! (fail-open).
#![no_std]
#![no_main]
// The BPF target's core has no 64-bit atomic types; the intrinsic lowers to BPF_ATOMIC_ADD
// (the build runs with RUSTC_BOOTSTRAP=1 already, for build-std: xtask/src/ebpf.rs).
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_NOEXIST, bpf_sock_addr},
    helpers::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, SockContext},
};
use aya_log_ebpf::debug;
use elasti_common::{
    Activity, CONFIG_INDEX, Config, MAX_OPEN_SOCKETS, MAX_SERVICES, MAX_TRACKED_SOCKETS,
    OpenSocket, OriginalDst, PROTO_TCP, ProxyTarget, RewriteCounters, ServiceKey,
};

/// Held (ClusterIP, port, proto) → agent listener. Written only by the agent.
#[map]
static SERVICES: HashMap<ServiceKey, ProxyTarget> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Agent-wide settings; a single element at [`CONFIG_INDEX`].
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Per-CPU rewrite counters indexed by `ProxyTarget::service_id`.
#[map]
static REWRITES: PerCpuArray<RewriteCounters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Socket cookie → the ClusterIP:port the socket asked for, for getpeername. LRU, so a
/// socket closed without us seeing it costs nothing in the end.
#[map]
static ORIGINAL_DST: LruHashMap<u64, OriginalDst> =
    LruHashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Counted ClusterIP:port → its connection counts. Entries are made by the agent; the
/// programs only add to them.
#[map]
static ACTIVITY: HashMap<ServiceKey, Activity> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Socket cookie → the counted ClusterIP:port of every open counted socket. A plain hash
/// (no LRU eviction), so every entry that goes in is taken out by `sock_release` and the
/// open count never drifts up; when it is full, connects are counted but not tracked.
#[map]
static OPEN_SOCKETS: HashMap<u64, OpenSocket> = HashMap::with_max_entries(MAX_OPEN_SOCKETS, 0);

const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let _ = try_connect4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let _ = try_connect6(&ctx);
    ALLOW
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    let _ = try_sock_release(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    let _ = try_getpeername4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    let _ = try_getpeername6(&ctx);
    ALLOW
}

/// Why a connect was left alone. Only the wrappers above look at it; all of them allow.
enum Skip {
    NotTcp,
    FromAgent,
    NotHeld,
    FamilyMismatch,
    CountOnly,
    NotTracked,
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = sock_addr(ctx);
    if sa.protocol != u32::from(PROTO_TCP) {
        return Err(Skip::NotTcp);
    }
    if is_agent() {
        return Err(Skip::FromAgent);
    }
    let port_be = user_port_be(sa);
    let key = ServiceKey::v4(sa.user_ip4, port_be, PROTO_TCP);
    // SAFETY: SERVICES is preallocated; a concurrent delete at worst makes us steer one more
    // connect to the agent, which still holds the listener (listener closes after removal).
    let target = *unsafe { SERVICES.get(&key) }.ok_or(Skip::NotHeld)?;
    if target.counts() {
        track_open(ctx, &key);
    }
    if !target.steers() {
        return Err(Skip::CountOnly);
    }
    if !target.is_v4_mapped() {
        return Err(Skip::FamilyMismatch);
    }
    remember_original(ctx, key.addr, port_be, target.service_id);
    set_user_ip4(ctx, target.v4_be());
    set_user_port(ctx, target.port_be);
    count(target.service_id, |c| c.connects += 1);
    debug!(ctx, "connect4 steered to service {}", target.service_id);
    Ok(())
}

fn try_connect6(ctx: &SockAddrContext) -> Result<(), Skip> {
    let sa = sock_addr(ctx);
    if sa.protocol != u32::from(PROTO_TCP) {
        return Err(Skip::NotTcp);
    }
    if is_agent() {
        return Err(Skip::FromAgent);
    }
    let port_be = user_port_be(sa);
    // IPv4-mapped destinations (Java and friends use v6 sockets for v4) arrive here too and
    // are stored mapped, so the same map entry serves them.
    let key = ServiceKey::v6(user_ip6(sa), port_be, PROTO_TCP);
    // SAFETY: as in try_connect4.
    let target = *unsafe { SERVICES.get(&key) }.ok_or(Skip::NotHeld)?;
    if target.counts() {
        track_open(ctx, &key);
    }
    if !target.steers() {
        return Err(Skip::CountOnly);
    }
    remember_original(ctx, key.addr, port_be, target.service_id);
    set_user_ip6(ctx, &target.addr);
    set_user_port(ctx, target.port_be);
    count(target.service_id, |c| c.connects += 1);
    debug!(ctx, "connect6 steered to service {}", target.service_id);
    Ok(())
}

/// Counts a connect to a Service with an `activity` trigger and records its socket as
/// open, once per socket (a second connect() on the same socket is not a second open).
fn track_open(ctx: &SockAddrContext, key: &ServiceKey) {
    let Some(activity) = ACTIVITY.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: the entry stays valid while this program runs (RCU); the counters are
    // only ever added to atomically.
    let generation = unsafe {
        add(&raw mut (*activity).connects);
        (*activity).generation
    };
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let open = OpenSocket {
        key: *key,
        generation,
    };
    if OPEN_SOCKETS
        .insert(&cookie, &open, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        // SAFETY: as above.
        unsafe { add(&raw mut (*activity).tracked) };
    }
}

/// A tracked socket is released: it is no longer open.
fn try_sock_release(ctx: &SockContext) -> Result<(), Skip> {
    // SAFETY: the kernel hands every cgroup/sock program a valid bpf_sock.
    if unsafe { (*ctx.sock).protocol } != u32::from(PROTO_TCP) {
        return Err(Skip::NotTcp);
    }
    // SAFETY: bpf_get_socket_cookie accepts a sock context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    let open = *unsafe { OPEN_SOCKETS.get(&cookie) }.ok_or(Skip::NotTracked)?;
    if OPEN_SOCKETS.remove(&cookie).is_err() {
        // Released twice at once: the other call counts it.
        return Err(Skip::NotTracked);
    }
    let activity = ACTIVITY.get_ptr_mut(&open.key).ok_or(Skip::NotTracked)?;
    // SAFETY: as in track_open.
    unsafe {
        if (*activity).generation == open.generation {
            add(&raw mut (*activity).released);
        }
    }
    Ok(())
}

/// One atomic add (BPF_ATOMIC_ADD, its old value unused): the entry is shared by every
/// CPU.
///
/// # Safety
/// `counter` must point into a live map value.
unsafe fn add(counter: *mut u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: the caller's pointer is valid and 8-byte aligned (a u64 field of a
    // #[repr(C)] map value).
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}

fn try_getpeername4(ctx: &SockAddrContext) -> Result<(), Skip> {
    let original = original_dst(ctx).ok_or(Skip::NotHeld)?;
    let a = original.addr;
    set_user_ip4(ctx, u32::from_ne_bytes([a[12], a[13], a[14], a[15]]));
    set_user_port(ctx, original.port_be);
    count(original.service_id, |c| c.peernames += 1);
    Ok(())
}

fn try_getpeername6(ctx: &SockAddrContext) -> Result<(), Skip> {
    let original = original_dst(ctx).ok_or(Skip::NotHeld)?;
    set_user_ip6(ctx, &original.addr);
    set_user_port(ctx, original.port_be);
    count(original.service_id, |c| c.peernames += 1);
    Ok(())
}

fn sock_addr(ctx: &SockAddrContext) -> &bpf_sock_addr {
    // SAFETY: the kernel hands every cgroup/sock_addr program a valid bpf_sock_addr.
    unsafe { &*ctx.sock_addr }
}

fn is_agent() -> bool {
    let agent = CONFIG.get(CONFIG_INDEX).map_or(0, |c| c.agent_cgroup_id);
    // SAFETY: a plain helper call with no arguments.
    agent != 0 && unsafe { bpf_get_current_cgroup_id() } == agent
}

/// `user_port` must be read with one 32-bit load (the verifier rejects narrower ones on
/// some kernels); the port is in its low 16 bits, in network order.
fn user_port_be(sa: &bpf_sock_addr) -> u16 {
    // SAFETY: reading a field of a valid context.
    unsafe { core::ptr::read_volatile(&sa.user_port) as u16 }
}

/// `user_ip6` must be read one 32-bit element at a time.
fn user_ip6(sa: &bpf_sock_addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: reading a field of a valid context.
        let word = unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) };
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        i += 1;
    }
    out
}

fn set_user_ip4(ctx: &SockAddrContext, addr_be: u32) {
    // SAFETY: user_ip4 is writable from connect4/getpeername4.
    unsafe { core::ptr::write_volatile(&mut (*ctx.sock_addr).user_ip4, addr_be) }
}

fn set_user_ip6(ctx: &SockAddrContext, addr: &[u8; 16]) {
    let mut i = 0;
    while i < 4 {
        let word = u32::from_ne_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        // SAFETY: user_ip6 is writable from connect6/getpeername6, one element at a time.
        unsafe { core::ptr::write_volatile(&mut (*ctx.sock_addr).user_ip6[i], word) }
        i += 1;
    }
}

fn set_user_port(ctx: &SockAddrContext, port_be: u16) {
    // SAFETY: user_port is writable from connect*/getpeername*; a full 32-bit store.
    unsafe { core::ptr::write_volatile(&mut (*ctx.sock_addr).user_port, u32::from(port_be)) }
}

fn remember_original(ctx: &SockAddrContext, addr: [u8; 16], port_be: u16, service_id: u32) {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = ORIGINAL_DST.insert(
        &cookie,
        &OriginalDst {
            addr,
            port_be,
            _pad: 0,
            service_id,
        },
        0,
    );
}

fn original_dst(ctx: &SockAddrContext) -> Option<OriginalDst> {
    // SAFETY: bpf_get_socket_cookie accepts a sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out at once.
    unsafe { ORIGINAL_DST.get(&cookie) }.copied()
}

fn count(service_id: u32, f: impl FnOnce(&mut RewriteCounters)) {
    if let Some(c) = REWRITES.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot; no other program touches it on this CPU concurrently.
        f(unsafe { &mut *c });
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
