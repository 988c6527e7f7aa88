//! Where blocking work runs: hashing or parsing a large body, file I/O of
//! a spool file, a PKCS#11 call. Shared by every layer above the wire
//! format (the wire format itself is synchronous and takes no runtime).

/// Run blocking work (hashing or parsing a large body, a PKCS#11 call)
/// without stalling the async runtime's worker: in `block_in_place` on a
/// multi-thread runtime (the worker's other tasks move to another thread),
/// directly elsewhere (plain threads, `spawn_blocking`, a current-thread
/// runtime). Unlike `spawn_blocking`, `f` may borrow.
pub fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// [`off_runtime`] when `large` (a body in a spool file), else directly.
pub fn off_runtime_if<R>(large: bool, f: impl FnOnce() -> R) -> R {
    if large { off_runtime(f) } else { f() }
}

/// Run `f` here when `inline`, else on the blocking pool (`f` owns what
/// it needs).
pub async fn off_worker_unless<T, F>(inline: bool, f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if inline {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
    }
}
