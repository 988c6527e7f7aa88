//! clamd's size limits against the largest message we let through.
//!
//! clamd closes an `INSTREAM` past its `StreamMaxLength` ("INSTREAM size
//! limit exceeded"): a message larger than that gets no verdict, so it is
//! answered 4xx, and the MTA tries it again until it expires. Debian's
//! clamav-daemon writes `StreamMaxLength 25M` into its clamd.conf, below
//! the 100 MB PEC messages we accept by default. clamd has no protocol
//! command that tells its limits, so we read its configuration file
//! (`[clamd] config`, by default `/etc/clamav/clamd.conf` when it exists)
//! at start — [`check`] is also what a reload calls — and say so in one
//! warning naming both numbers and the fix.
//!
//! `MaxFileSize` and `MaxScanSize` are read too: past them clamd does not
//! refuse, it scans only the first part and answers on that, so a virus
//! further on passes; the warning names them when they are too small.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// clamd's built-in `StreamMaxLength` when clamd.conf does not set it:
/// 100M since ClamAV 0.104 (`clamconf` on ClamAV 1.x says 104857600);
/// Debian's own 25M is written in its clamd.conf, which we read.
pub const BUILTIN_STREAM_MAX_LENGTH: u64 = 100 << 20;
/// clamd's built-in `MaxScanSize` (ClamAV 1.x).
pub const BUILTIN_MAX_SCAN_SIZE: u64 = 400 << 20;
/// clamd's built-in `MaxFileSize` (ClamAV 1.x).
pub const BUILTIN_MAX_FILE_SIZE: u64 = 100 << 20;

/// One size option of clamd.conf: its value, and whether the file sets it
/// (else clamd's built-in default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub bytes: u64,
    pub set: bool,
}

impl Setting {
    fn builtin(bytes: u64) -> Self {
        Setting { bytes, set: false }
    }
}

/// The limits a clamd.conf gives clamd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClamdLimits {
    pub stream_max_length: Setting,
    pub max_scan_size: Setting,
    pub max_file_size: Setting,
}

#[derive(Debug, thiserror::Error)]
pub enum ClamdConfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {key} {value:?} is not a size (a number, optionally followed by K or M)")]
    Size {
        line: usize,
        key: &'static str,
        value: String,
    },
}

/// clamd.conf's sizes: digits, optionally `K`/`k` (KiB) or `M`/`m` (MiB),
/// as clamd's own parser takes them.
fn parse_clamd_size(v: &str) -> Option<u64> {
    let (digits, mult) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&v[..v.len() - 1], 1u64 << 20),
        _ => (v, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// The size options of a clamd.conf text: `Option Value` lines, `#`
/// comments; option names are case-sensitive (as clamd reads them); the
/// last line of an option wins.
pub fn parse_clamd_conf(text: &str) -> Result<ClamdLimits, ClamdConfError> {
    let mut limits = ClamdLimits {
        stream_max_length: Setting::builtin(BUILTIN_STREAM_MAX_LENGTH),
        max_scan_size: Setting::builtin(BUILTIN_MAX_SCAN_SIZE),
        max_file_size: Setting::builtin(BUILTIN_MAX_FILE_SIZE),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else {
            continue;
        };
        let value = words.next().unwrap_or("");
        let (key, slot) = match name {
            "StreamMaxLength" => ("StreamMaxLength", &mut limits.stream_max_length),
            "MaxScanSize" => ("MaxScanSize", &mut limits.max_scan_size),
            "MaxFileSize" => ("MaxFileSize", &mut limits.max_file_size),
            _ => continue,
        };
        let bytes = parse_clamd_size(value).ok_or_else(|| ClamdConfError::Size {
            line: n + 1,
            key,
            value: value.to_owned(),
        })?;
        *slot = Setting { bytes, set: true };
    }
    Ok(limits)
}

/// Read and parse a clamd.conf.
pub fn read_clamd_conf(path: &Path) -> Result<ClamdLimits, ClamdConfError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClamdConfError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_clamd_conf(&text)
}

/// The largest message clamd is given, and the key that allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Largest {
    pub bytes: u64,
    pub key: &'static str,
}

/// The largest message the scan sees: a submission to one recipient up to
/// `[limits] max_product` (the access point scans it), and, with a
/// delivery point, an inbound message up to `[delivery] max_size` (the
/// reception point scans it before it is delivered through it).
pub fn largest_scanned(cfg: &Config) -> Largest {
    let access = Largest {
        bytes: cfg.limits.max_product,
        key: "[limits] max_product",
    };
    let delivery = Largest {
        bytes: cfg.delivery.max_size,
        key: "[delivery] max_size",
    };
    if !cfg.delivery.listen.is_empty() && delivery.bytes > access.bytes {
        delivery
    } else {
        access
    }
}

/// A size as clamd.conf writes it: `100M`, `512K`, or bytes.
pub fn clamd_size(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(1 << 20) {
        format!("{}M", bytes >> 20)
    } else if bytes > 0 && bytes.is_multiple_of(1 << 10) {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

/// The smallest whole `M` not below `bytes` (what to write in clamd.conf).
fn round_up_m(bytes: u64) -> String {
    format!("{}M", bytes.div_ceil(1 << 20))
}

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assessment {
    /// Every limit is at least the largest message.
    Fits,
    /// StreamMaxLength is below it: such a message gets 4xx forever.
    StreamTooSmall,
    /// The stream fits, but clamd scans only part of such a message.
    ScanTooSmall,
}

/// Compare `limits` with `largest`.
pub fn assess(limits: &ClamdLimits, largest: Largest) -> Assessment {
    if limits.stream_max_length.bytes < largest.bytes {
        Assessment::StreamTooSmall
    } else if limits.max_file_size.bytes < largest.bytes
        || limits.max_scan_size.bytes < largest.bytes
    {
        Assessment::ScanTooSmall
    } else {
        Assessment::Fits
    }
}

/// The one line that says what to do, for `conf`.
pub fn advice(conf: &Path, limits: &ClamdLimits, largest: Largest) -> Option<String> {
    let want = round_up_m(largest.bytes);
    let (stream, scan, file) = (
        clamd_size(limits.stream_max_length.bytes),
        clamd_size(limits.max_scan_size.bytes),
        clamd_size(limits.max_file_size.bytes),
    );
    let max = clamd_size(largest.bytes);
    let conf = conf.display();
    match assess(limits, largest) {
        Assessment::Fits => None,
        Assessment::StreamTooSmall => Some(format!(
            "clamd's StreamMaxLength ({stream}{}) is below the largest message pec-milter \
             accepts ({} = {max}): clamd drops a longer stream, so such a message gets no \
             verdict and is answered 4xx until it expires. Raise it in {conf}: \
             StreamMaxLength {want}, with MaxScanSize and MaxFileSize at least {want} \
             (now {scan} and {file}), then restart clamd",
            if limits.stream_max_length.set {
                ""
            } else {
                ", clamd's built-in default"
            },
            largest.key,
        )),
        Assessment::ScanTooSmall => Some(format!(
            "clamd's MaxFileSize ({file}) or MaxScanSize ({scan}) is below the largest message \
             pec-milter accepts ({} = {max}): clamd scans only the first part of a larger one. \
             Raise them in {conf} to at least {want}, then restart clamd",
            largest.key,
        )),
    }
}

/// What [`check`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// No clamd.conf to read (`config = ""`, none at the default place,
    /// or clamd is off).
    Skipped,
    /// It could not be read or parsed (a warning said so).
    Unreadable(String),
    /// Read and compared; `Some` advice was logged as a warning.
    Checked {
        limits: ClamdLimits,
        largest: Largest,
        advice: Option<String>,
    },
}

/// Read clamd's configuration named by `[clamd]` and compare its limits
/// with the largest message we let through: one warning when they fall
/// short (naming both numbers and how to raise them), one info line when
/// they fit. At start, and again at each reload.
pub fn check(cfg: &Config) -> CheckOutcome {
    if !cfg.clamd.enabled {
        return CheckOutcome::Skipped;
    }
    let Some(conf) = cfg.clamd.config_file() else {
        tracing::debug!("[clamd] no clamd.conf to read: its StreamMaxLength is not checked");
        return CheckOutcome::Skipped;
    };
    let limits = match read_clamd_conf(&conf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(clamd_conf = %conf.display(), error = %e,
                "cannot read clamd's configuration: its StreamMaxLength is not checked ([clamd] config)");
            return CheckOutcome::Unreadable(e.to_string());
        }
    };
    let largest = largest_scanned(cfg);
    let advice = advice(&conf, &limits, largest);
    match &advice {
        Some(line) => tracing::warn!(
            clamd_conf = %conf.display(),
            stream_max_length = limits.stream_max_length.bytes,
            max_scan_size = limits.max_scan_size.bytes,
            max_file_size = limits.max_file_size.bytes,
            max_message = largest.bytes,
            "{line}"
        ),
        None => tracing::info!(
            clamd_conf = %conf.display(),
            stream_max_length = limits.stream_max_length.bytes,
            max_message = largest.bytes,
            "clamd's StreamMaxLength, MaxScanSize and MaxFileSize take the largest message"
        ),
    }
    CheckOutcome::Checked {
        limits,
        largest,
        advice,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size options of the clamd.conf Debian 12's clamav-daemon writes
    /// (its debconf defaults), with the lines around them.
    const DEBIAN: &str = "\
#Automatically Generated by clamav-daemon postinst
#To reconfigure clamd run #dpkg-reconfigure clamav-daemon
#Please read /usr/share/doc/clamav-daemon/README.Debian.gz for details
LocalSocket /var/run/clamav/clamd.ctl
FixStaleSocket true
LocalSocketGroup clamav
LocalSocketMode 666
# TemporaryDirectory is not set to its default /tmp here to make overriding
# the default with environment variables TMPDIR/TMP/TEMP possible
User clamav
ScanMail true
ScanArchive true
ArchiveBlockEncrypted false
MaxDirectoryRecursion 15
MaxThreads 12
ReadTimeout 180
CommandReadTimeout 30
SendBufTimeout 200
MaxQueue 100
IdleTimeout 30
ExcludePath ^/proc/
ExcludePath ^/sys/
LocalSocket /var/run/clamav/clamd.ctl
MaxScanTime 120000
MaxScanSize 100M
MaxFileSize 25M
MaxRecursion 16
MaxFiles 10000
MaxPartitions 50
MaxIconsPE 100
PCREMatchLimit 10000
PCRERecMatchLimit 5000
PCREMaxFileSize 25M
StreamMaxLength 25M
LogFile /var/log/clamav/clamav.log
LogTime true
";

    fn cfg() -> Config {
        Config::default()
    }

    #[test]
    fn debian_defaults_are_read() {
        let l = parse_clamd_conf(DEBIAN).expect("parses");
        assert_eq!(
            l.stream_max_length,
            Setting {
                bytes: 25 << 20,
                set: true
            }
        );
        assert_eq!(
            l.max_scan_size,
            Setting {
                bytes: 100 << 20,
                set: true
            }
        );
        assert_eq!(
            l.max_file_size,
            Setting {
                bytes: 25 << 20,
                set: true
            }
        );
    }

    #[test]
    fn sizes_and_defaults() {
        let l = parse_clamd_conf("# nothing\n\nTCPSocket 3310\n").expect("parses");
        assert_eq!(l.stream_max_length, Setting::builtin(100 << 20));
        assert_eq!(l.max_scan_size, Setting::builtin(400 << 20));
        let l = parse_clamd_conf("StreamMaxLength 512k\nMaxFileSize 2048\nStreamMaxLength\t200m\n")
            .expect("parses");
        assert_eq!(l.stream_max_length.bytes, 200 << 20, "the last line wins");
        assert_eq!(l.max_file_size.bytes, 2048);
        // clamd's option names are case-sensitive: another spelling is not this option
        let l = parse_clamd_conf("streammaxlength 1M\n").expect("parses");
        assert!(!l.stream_max_length.set);
        for bad in [
            "StreamMaxLength 25G",
            "StreamMaxLength",
            "StreamMaxLength M",
            "MaxScanSize -1",
        ] {
            let e = parse_clamd_conf(&format!("# x\n{bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("line 2"), "{e}");
        }
        assert_eq!(clamd_size(25 << 20), "25M");
        assert_eq!(clamd_size(512 << 10), "512K");
        assert_eq!(clamd_size(1000), "1000");
        assert_eq!(round_up_m((100 << 20) + 1), "101M");
    }

    #[test]
    fn the_largest_message_is_what_the_config_lets_through() {
        let mut c = cfg();
        assert_eq!(
            largest_scanned(&c),
            Largest {
                bytes: 100 << 20,
                key: "[limits] max_product"
            }
        );
        c.delivery.max_size = 200 << 20;
        assert_eq!(largest_scanned(&c).key, "[delivery] max_size");
        c.delivery.listen.clear();
        assert_eq!(largest_scanned(&c).key, "[limits] max_product");
    }

    #[test]
    fn debian_defaults_warn_with_both_numbers_and_the_fix() {
        let l = parse_clamd_conf(DEBIAN).expect("parses");
        let largest = largest_scanned(&cfg());
        assert_eq!(assess(&l, largest), Assessment::StreamTooSmall);
        let a = advice(Path::new("/etc/clamav/clamd.conf"), &l, largest).expect("advice");
        for part in [
            "StreamMaxLength (25M)",
            "[limits] max_product = 100M",
            "4xx",
            "/etc/clamav/clamd.conf",
            "StreamMaxLength 100M",
            "MaxScanSize and MaxFileSize at least 100M",
            "restart clamd",
        ] {
            assert!(a.contains(part), "{part:?} in {a}");
        }
        // raised as README says: nothing to say
        let fixed = parse_clamd_conf(&format!("{DEBIAN}StreamMaxLength 100M\nMaxFileSize 100M\n"))
            .expect("parses");
        assert_eq!(assess(&fixed, largest), Assessment::Fits);
        assert_eq!(advice(Path::new("x"), &fixed, largest), None);
        // the stream fits, the scan does not
        let part = parse_clamd_conf(&format!("{DEBIAN}StreamMaxLength 100M\n")).expect("parses");
        assert_eq!(assess(&part, largest), Assessment::ScanTooSmall);
        let a = advice(Path::new("c.conf"), &part, largest).expect("advice");
        assert!(
            a.contains("MaxFileSize (25M)") && a.contains("first part"),
            "{a}"
        );
        // no StreamMaxLength line: clamd's built-in 100M fits 100M
        let builtin = parse_clamd_conf("MaxFileSize 100M\n").expect("parses");
        assert_eq!(assess(&builtin, largest), Assessment::Fits);
        let big = Largest {
            bytes: 150 << 20,
            key: "[delivery] max_size",
        };
        let a = advice(Path::new("c.conf"), &builtin, big).expect("advice");
        assert!(
            a.contains("(100M, clamd's built-in default)") && a.contains("StreamMaxLength 150M"),
            "{a}"
        );
    }

    #[test]
    fn check_reads_the_configured_file_and_warns_once() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("buf").extend_from_slice(d);
                Ok(d.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().expect("tmp");
        let conf = dir.path().join("clamd.conf");
        std::fs::write(&conf, DEBIAN).expect("write");
        let mut c = cfg();
        c.clamd.config = Some(conf.clone());
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(sub, || check(&c));
        assert!(
            matches!(
                out,
                CheckOutcome::Checked {
                    advice: Some(_),
                    ..
                }
            ),
            "{out:?}"
        );
        let text = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        let warns: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warns.len(), 1, "{text}");
        assert!(
            warns[0].contains("stream_max_length=26214400")
                && warns[0].contains("max_message=104857600"),
            "{}",
            warns[0]
        );

        // config = "": not read; a file that is not there: one warning, no failure
        c.clamd.config = Some(PathBuf::new());
        assert_eq!(check(&c), CheckOutcome::Skipped);
        c.clamd.config = Some(dir.path().join("missing.conf"));
        assert!(matches!(check(&c), CheckOutcome::Unreadable(_)));
        c.clamd.enabled = false;
        assert_eq!(check(&c), CheckOutcome::Skipped);
    }
}
