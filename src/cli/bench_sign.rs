//! `pec-milter bench-sign`: signatures per second of the configured key.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use pec_milter::config::Config;
use pec_milter::daemon;

pub fn bench_sign(config: &Path, threads: usize, count: usize) -> Result<ExitCode> {
    super::init_logging_to("warn");
    let cfg = Config::load(config)?;
    bench(&cfg, threads, count)
}

/// `pec-milter bench-sign`: `count` CMS signatures of a 1 KiB content from
/// `threads` threads with the configured key; one line of results.
fn bench(cfg: &Config, threads: usize, count: usize) -> Result<ExitCode> {
    use pec_milter::crypto::DigestAlg;
    let threads = threads.max(1);
    let key = daemon::load_key(cfg)?;
    let content = vec![b'x'; 1024];
    let now = std::time::SystemTime::now();
    // warm-up: one signature per thread
    pec_milter::crypto::sign_content(key.as_ref(), DigestAlg::Sha256, &content, now)?;
    let per = count.div_ceil(threads);
    let t = std::time::Instant::now();
    let done: Result<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let key = key.clone();
                let content = &content;
                s.spawn(move || -> Result<usize> {
                    for _ in 0..per {
                        pec_milter::crypto::sign_content(
                            key.as_ref(),
                            DigestAlg::Sha256,
                            content,
                            now,
                        )?;
                    }
                    Ok(per)
                })
            })
            .collect();
        let mut n = 0;
        for h in handles {
            n += h
                .join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        }
        Ok(n)
    });
    let n = done?;
    let secs = t.elapsed().as_secs_f64();
    let backend = match cfg.signing.backend {
        pec_milter::config::SigningBackend::Pem => "pem",
        pec_milter::config::SigningBackend::Pkcs11 => "pkcs11",
    };
    let pool = match cfg.signing.backend {
        pec_milter::config::SigningBackend::Pkcs11 => daemon::pkcs11_options(cfg)?.pool_size,
        pec_milter::config::SigningBackend::Pem => 0,
    };
    println!(
        "backend={backend} pool={pool} threads={threads} signatures={n} seconds={secs:.3} per_second={:.1}",
        n as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}
