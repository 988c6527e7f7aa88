//! The providers' index (IGPEC): LDIF parsing and writing, snapshot lookups,
//! loading from a real, throwaway OpenLDAP `slapd` (schema
//! `integration/ldap/igpec.schema`), and the live index's refresh rules (a
//! failed or empty load never replaces the last good copy).

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{free_port, installed};
use pec_milter::crypto::pki::Pki;
use pec_milter::index::ldap::LdapSource;
use pec_milter::index::{
    FIRST_RETRY, IndexError, IndexSnapshot, IndexSource, MAX_RETRY, ProviderEntry, ProviderIndex,
    RefreshSchedule, certificate_hash, ldif,
};
use pec_milter::pec::TipoDestinatario;
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Fixtures

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/index").join(name)
}

fn rfc_fixture_text() -> String {
    std::fs::read_to_string(fixture("rfc6109-example.ldif")).expect("read rfc6109-example.ldif")
}

struct TestProviders {
    a: ProviderEntry,
    b: ProviderEntry,
    /// A secondary operating environment of B, with its own certificate.
    b_unit: ProviderEntry,
    a_der: Vec<u8>,
    b_der: Vec<u8>,
    /// A provider certificate that no entry lists.
    stranger_der: Vec<u8>,
}

fn der_of(pki: &Pki) -> Vec<u8> {
    pki.cert().expect("parse cert").to_der().expect("cert DER")
}

/// Two test providers (and a unit of B), generated once per test binary.
fn providers() -> &'static TestProviders {
    static P: OnceLock<TestProviders> = OnceLock::new();
    P.get_or_init(|| {
        let pa = Pki::generate("Provider A", "pec.a.test", 30).expect("pki A");
        let pb = Pki::generate("Provider B", "pec.b.test", 30).expect("pki B");
        let (unit_pem, _) = pb
            .issue_leaf("Provider B", "pec.b.test", 30)
            .expect("leaf B unit");
        let unit_der = openssl::x509::X509::from_pem(&unit_pem)
            .expect("unit pem")
            .to_der()
            .expect("unit der");
        let (stranger_pem, _) = pa
            .issue_leaf("Stranger", "stranger.test", 30)
            .expect("leaf stranger");
        let stranger_der = openssl::x509::X509::from_pem(&stranger_pem)
            .expect("stranger pem")
            .to_der()
            .expect("stranger der");
        let a_der = der_of(&pa);
        let b_der = der_of(&pb);
        assert_eq!(pa.cert_sha1_hex().expect("sha1"), certificate_hash(&a_der));
        let a = ProviderEntry {
            dn: "providerName=Provider A,o=postacert".into(),
            name: "Provider A".into(),
            unit: None,
            cert_hashes: vec![certificate_hash(&a_der)],
            certificates: vec![a_der.clone()],
            mail_receipt: "ricevute@pec.a.test".into(),
            managed_domains: vec!["pec.a.test".into()],
        };
        let b = ProviderEntry {
            dn: "providerName=Provider B,o=postacert".into(),
            name: "Provider B".into(),
            unit: None,
            cert_hashes: vec![certificate_hash(&b_der)],
            certificates: vec![b_der.clone()],
            mail_receipt: "ricevute@pec.b.test".into(),
            managed_domains: vec!["pec.b.test".into(), "mail.pec.b.test".into()],
        };
        let b_unit = ProviderEntry {
            dn: "providerUnit=Disaster Recovery,providerName=Provider B,o=postacert".into(),
            name: "Provider B".into(),
            unit: Some("Disaster Recovery".into()),
            cert_hashes: vec![certificate_hash(&unit_der)],
            certificates: vec![unit_der],
            mail_receipt: "ricevute-dr@pec.b.test".into(),
            managed_domains: vec!["dr.pec.b.test".into()],
        };
        TestProviders {
            a,
            b,
            b_unit,
            a_der,
            b_der,
            stranger_der,
        }
    })
}

/// The signer certificate of the real Aruba 2014 message (DER).
fn aruba_signer_der() -> Vec<u8> {
    let p7s = std::fs::read(root().join("tests/fixtures/crypto/aruba_accettazione.p7s"))
        .expect("read aruba p7s");
    let p7 = openssl::pkcs7::Pkcs7::from_der(&p7s).expect("parse p7s");
    let certs = p7
        .signed()
        .and_then(|s| s.certificates())
        .expect("certificates in p7s");
    // the signer, not the DigitPA CA1 certificate that travels with it
    let signer = certs
        .iter()
        .find(|c| {
            c.subject_name()
                .entries()
                .any(|e| e.data().as_slice().ends_with(b"ARUBA PEC"))
        })
        .expect("ARUBA signer certificate");
    signer.to_der().expect("der")
}

/// Multi-valued fields sorted, entries sorted by DN: for set comparison.
fn normalised(mut entries: Vec<ProviderEntry>) -> Vec<ProviderEntry> {
    for e in &mut entries {
        e.cert_hashes.sort();
        e.certificates.sort();
        e.managed_domains.sort();
    }
    entries.sort_by(|x, y| x.dn.cmp(&y.dn));
    entries
}

/// `text` without the (possibly folded) lines of attribute `attr`.
fn drop_attr(text: &str, attr: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with(' ') {
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        skipping = line.starts_with(&format!("{attr}:"));
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn ldif_error(r: Result<Vec<ProviderEntry>, IndexError>) -> (usize, String) {
    match r {
        Err(IndexError::Ldif { line, reason }) => (line, reason),
        other => panic!("expected an LDIF error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// LDIF

#[test]
fn ldif_rfc6109_fixture() {
    let entries = ldif::load(&fixture("rfc6109-example.ldif")).expect("parse fixture");
    assert_eq!(entries.len(), 2, "the o=postacert root is not a provider");
    let anon = &entries[0];
    assert_eq!(
        anon.dn,
        "providerName=Anonymous Certified Mail S.p.A.,o=postacert"
    );
    assert_eq!(anon.name, "Anonymous Certified Mail S.p.A.");
    assert_eq!(anon.unit, None);
    assert_eq!(anon.mail_receipt, "ssacceptance@postalser.example.com");
    assert_eq!(
        anon.managed_domains,
        [
            "mail.anpocert.example.com",
            "cert.company.example.com",
            "costmec.example.com"
        ]
    );
    assert_eq!(anon.certificates.len(), 1);
    assert_eq!(anon.cert_hashes, [certificate_hash(&anon.certificates[0])]);
    openssl::x509::X509::from_der(&anon.certificates[0]).expect("the synthetic cert is DER");

    let aruba = &entries[1];
    assert_eq!(aruba.name, "ARUBA PEC S.p.A.");
    // written lowercase in the file, normalised to uppercase
    assert_eq!(
        aruba.cert_hashes,
        ["AAA71BFD2DBC9FE67AA23C9F33AAF3316DF1AA66"]
    );
    assert_eq!(aruba.certificates, [aruba_signer_der()]);
    assert_eq!(aruba.managed_domains, ["pec.it", "pec.aruba.it"]);
    assert_eq!(aruba.mail_receipt, "ricevute@pec.aruba.it");
}

#[test]
fn ldif_folding_base64_binary_and_case() {
    let p = providers();
    let a_b64 = B64.encode(&p.a_der);
    // fold the certificate at an odd width, CRLF line ends, a folded plain
    // value, a folded comment, base64 DN and name, mixed-case names
    let mut cert_lines = String::new();
    let mut rest = a_b64.as_str();
    let mut first = true;
    while !rest.is_empty() {
        let n = rest.len().min(if first { 40 } else { 61 });
        let (head, tail) = rest.split_at(n);
        if first {
            cert_lines.push_str(&format!("PROVIDERCERTIFICATE;Binary::{head}\r\n"));
        } else {
            cert_lines.push_str(&format!(" {head}\r\n"));
        }
        first = false;
        rest = tail;
    }
    let name = "Società di Prova S.p.A.";
    let dn = format!("providerName={name},o=postacert");
    let doc = format!(
        "version: 1\r\n\
         # a comment that is\r\n \
          folded onto a second line\r\n\
         \r\n\
         dn:: {dn64}\r\n\
         ObjectClass: top\r\n\
         objectCLASS: Provider\r\n\
         providername:: {name64}\r\n\
         ProviderCertificateHash: {hash_lower}\r\n\
         {cert_lines}\
         mailreceipt:   ricevute@pec.a.test\r\n\
         MANAGEDDOMAINS: PEC.A.\r\n \
         TEST\r\n\
         managedDomains: Other.Example\r\n\
         \r\n\
         \r\n\
         dn: providerUnit=DR,providerName=X,o=postacert\r\n\
         objectclass: provider\r\n\
         providerName: X\r\n\
         providerUnit: DR\r\n\
         providerCertificateHash: {hash_b}\r\n\
         providerCertificate;binary:: {b64_b}\r\n\
         mailReceipt: r@x.test\r\n\
         managedDomains: x.test\r\n",
        dn64 = B64.encode(dn.as_bytes()),
        name64 = B64.encode(name.as_bytes()),
        hash_lower = certificate_hash(&p.a_der).to_ascii_lowercase(),
        hash_b = certificate_hash(&p.b_der),
        b64_b = B64.encode(&p.b_der),
    );
    let entries = ldif::parse(&doc).expect("parse");
    assert_eq!(entries.len(), 2);
    let e = &entries[0];
    assert_eq!(e.dn, dn);
    assert_eq!(e.name, name);
    assert_eq!(e.cert_hashes, [certificate_hash(&p.a_der)]);
    assert_eq!(e.certificates, std::slice::from_ref(&p.a_der));
    assert_eq!(e.mail_receipt, "ricevute@pec.a.test");
    assert_eq!(e.managed_domains, ["pec.a.test", "other.example"]);
    let u = &entries[1];
    assert_eq!(u.unit.as_deref(), Some("DR"));
    assert_eq!(u.certificates, std::slice::from_ref(&p.b_der));
}

#[test]
fn ldif_errors_name_the_line() {
    let p = providers();
    let good = ldif::write(std::slice::from_ref(&p.a));

    // missing mailReceipt: the entry's dn line (3: after two comment lines)
    let doc = format!("# one\n# two\n{}", drop_attr(&good, "mailReceipt"));
    let (line, reason) = ldif_error(ldif::parse(&doc));
    assert_eq!(line, 3, "{reason}");
    assert!(reason.contains("mailReceipt"), "{reason}");
    assert!(reason.contains("Provider A"), "{reason}");

    for missing in [
        "providerName",
        "providerCertificateHash",
        "providerCertificate;binary",
        "managedDomains",
    ] {
        let doc = drop_attr(&good, missing);
        let (line, reason) = ldif_error(ldif::parse(&doc));
        assert_eq!(line, 1, "{reason}");
        let base = missing.split(';').next().unwrap_or(missing);
        assert!(reason.contains(base), "{missing}: {reason}");
    }

    // bad base64: the attribute's own line
    let doc = good.replacen(
        "mailReceipt: ricevute@pec.a.test",
        "mailReceipt:: !!!notbase64",
        1,
    );
    let bad_line = doc
        .lines()
        .position(|l| l.starts_with("mailReceipt::"))
        .expect("line")
        + 1;
    let (line, reason) = ldif_error(ldif::parse(&doc));
    assert_eq!(line, bad_line);
    assert!(reason.contains("base64"), "{reason}");

    // change records are refused
    let doc = "dn: providerName=X,o=postacert\nchangetype: add\nobjectClass: provider\n";
    let (line, reason) = ldif_error(ldif::parse(doc));
    assert_eq!(line, 2);
    assert!(reason.contains("change"), "{reason}");
    let doc = "\n\ndn: providerName=X,o=postacert\nchangetype: delete\n";
    assert_eq!(ldif_error(ldif::parse(doc)).0, 4);

    // URL values are refused
    let doc = "dn: providerName=X,o=postacert\nobjectClass: provider\nproviderCertificate;binary:< file:///etc/passwd\n";
    let (line, reason) = ldif_error(ldif::parse(doc));
    assert_eq!(line, 3);
    assert!(reason.contains("not supported"), "{reason}");

    // a record not starting with dn, a line without colon, a stray continuation
    assert_eq!(ldif_error(ldif::parse("objectClass: provider\n")).0, 1);
    assert_eq!(ldif_error(ldif::parse("dn: o=postacert\nnonsense\n")).0, 2);
    assert_eq!(ldif_error(ldif::parse("\n continued\n")).0, 2);
    // a single-valued attribute twice
    let doc = good.replacen(
        "mailReceipt: ricevute@pec.a.test",
        "mailReceipt: a@pec.a.test\nmailReceipt: b@pec.a.test",
        1,
    );
    let (_, reason) = ldif_error(ldif::parse(&doc));
    assert!(reason.contains("single-valued"), "{reason}");

    // missing file
    match ldif::load(Path::new("/nonexistent/igpec.ldif")) {
        Err(IndexError::Io { path, .. }) => assert_eq!(path, Path::new("/nonexistent/igpec.ldif")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn ldif_ignores_non_providers_and_empty_documents() {
    assert_eq!(ldif::parse("").expect("empty").len(), 0);
    assert_eq!(
        ldif::parse("# only a comment\n\n\n")
            .expect("comment")
            .len(),
        0
    );
    let root_only = "dn: o=postacert\nobjectClass: top\nobjectClass: organization\no: postacert\n";
    assert_eq!(ldif::parse(root_only).expect("root").len(), 0);
}

#[test]
fn ldif_write_parse_round_trip() {
    let p = providers();
    let mut odd = p.a.clone();
    odd.dn = String::new(); // written as providerName=<escaped name>,o=postacert
    odd.name = "Società, \"Prova\" S.p.A.+x".into();
    odd.mail_receipt = "ricevute@pec.c.test".into();
    odd.managed_domains = vec!["pec.c.test".into()];
    odd.cert_hashes
        .push("0000000000000000000000000000000000000000".into());
    let entries = vec![p.a.clone(), p.b.clone(), p.b_unit.clone(), odd.clone()];
    let text = ldif::write(&entries);
    assert!(
        text.lines().all(|l| l.len() <= 76),
        "folded at 76 columns:\n{text}"
    );
    assert!(text.contains("providerCertificate;binary:: MII"));
    let back = ldif::parse(&text).expect("parse what we wrote");
    let mut expected = entries.clone();
    expected[3].dn = "providerName=Società\\, \\\"Prova\\\" S.p.A.\\+x,o=postacert".into();
    assert_eq!(back, expected);

    // the whole directory (root first) parses to the same providers
    let dir = ldif::write_directory(&entries);
    assert!(dir.starts_with("dn: o=postacert\n"));
    assert_eq!(ldif::parse(&dir).expect("directory"), expected);

    // and the fixture survives a round trip too
    let fixture = ldif::parse(&rfc_fixture_text()).expect("fixture");
    assert_eq!(
        ldif::parse(&ldif::write(&fixture)).expect("re-parse"),
        fixture
    );
}

#[test]
fn ldif_never_panics_on_truncated_or_mangled_input() {
    let text = rfc_fixture_text();
    for (i, _) in text.char_indices() {
        let _ = ldif::parse(&text[..i]);
    }
    let mangled: String = text
        .chars()
        .map(|c| match c {
            ':' => ' ',
            '\n' => '\n',
            c => c,
        })
        .collect();
    assert!(ldif::parse(&mangled).is_err());
    for weird in [
        "dn:",
        "dn::",
        "dn:: ===",
        ":",
        "::",
        " ",
        "\u{feff}dn: o=postacert\n",
        "dn: x\n objectClass: provider",
        "dn: x\nobjectClass:: cHJvdmlkZXI=\n",
        "dn: x\nobjectClass: provider\nproviderName:: /w==\n",
    ] {
        let _ = ldif::parse(weird);
    }
    // a provider whose name is not UTF-8 is an error, not a panic
    assert!(ldif::parse("dn: x\nobjectClass: provider\nproviderName:: /w==\n").is_err());
}

// ---------------------------------------------------------------------------
// Snapshot lookups

fn snapshot_ab() -> IndexSnapshot {
    let p = providers();
    IndexSnapshot::new(
        vec![p.a.clone(), p.b.clone(), p.b_unit.clone()],
        "test".into(),
    )
    .expect("snapshot")
}

#[test]
fn snapshot_domain_lookups() {
    let s = snapshot_ab();
    assert_eq!(s.providers().len(), 3);
    assert_eq!(s.source(), "test");
    assert!(s.loaded_at() <= std::time::SystemTime::now());
    assert_eq!(
        s.provider_for_domain("pec.a.test").map(|e| e.name.as_str()),
        Some("Provider A")
    );
    assert_eq!(
        s.provider_for_domain("PEC.A.Test").map(|e| e.name.as_str()),
        Some("Provider A")
    );
    assert_eq!(
        s.provider_for_domain("pec.a.test.")
            .map(|e| e.name.as_str()),
        Some("Provider A")
    );
    assert_eq!(
        s.provider_for_domain("Mail.PEC.b.test")
            .map(|e| e.dn.as_str()),
        Some("providerName=Provider B,o=postacert")
    );
    assert_eq!(
        s.provider_for_domain("dr.pec.b.test")
            .and_then(|e| e.unit.as_deref()),
        Some("Disaster Recovery")
    );
    // subdomains and parents are not implied
    assert!(!s.is_certified("x.pec.a.test"));
    assert!(!s.is_certified("a.test"));
    assert!(!s.is_certified("pec.a.test.example"));
    assert!(!s.is_certified(""));
    assert!(s.is_certified("pec.b.test"));
    assert!(s.providers()[1].manages("MAIL.pec.b.test"));
    assert!(!s.providers()[1].manages("pec.a.test"));
}

#[test]
fn snapshot_duplicate_domain_keeps_the_first() {
    let p = providers();
    let mut thief = p.b.clone();
    thief.dn = "providerName=Thief,o=postacert".into();
    thief.name = "Thief".into();
    thief.managed_domains = vec!["PEC.A.TEST".into(), "thief.test".into()];
    let s = IndexSnapshot::new(vec![p.a.clone(), thief], "dup".into()).expect("snapshot");
    assert_eq!(
        s.provider_for_domain("pec.a.test").map(|e| e.name.as_str()),
        Some("Provider A")
    );
    assert_eq!(
        s.provider_for_domain("thief.test").map(|e| e.name.as_str()),
        Some("Thief")
    );
}

#[test]
fn snapshot_certificate_lookups() {
    let p = providers();
    let s = snapshot_ab();
    assert_eq!(
        s.provider_for_certificate(&p.a_der)
            .map(|e| e.name.as_str()),
        Some("Provider A")
    );
    assert_eq!(
        s.provider_for_certificate(&p.b_der).map(|e| e.dn.as_str()),
        Some("providerName=Provider B,o=postacert")
    );
    assert_eq!(
        s.provider_for_certificate(&p.b_unit.certificates[0])
            .and_then(|e| e.unit.as_deref()),
        Some("Disaster Recovery")
    );
    // a certificate whose hash no entry lists
    assert!(s.provider_for_certificate(&p.stranger_der).is_none());
    assert!(s.provider_for_certificate(b"").is_none());

    // the entry lists A's hash, but its certificate differs by one byte
    let mut tampered = p.a.clone();
    let last = tampered.certificates[0].len() - 1;
    tampered.certificates[0][last] ^= 0x01;
    let s = IndexSnapshot::new(vec![tampered.clone(), p.b.clone()], "tampered".into())
        .expect("snapshot");
    assert!(s.provider_for_certificate(&p.a_der).is_none());
    // nor does the tampered DER itself match (its hash is not listed)
    assert!(
        s.provider_for_certificate(&tampered.certificates[0])
            .is_none()
    );

    // the hash is matched case-insensitively
    let mut lower = p.a.clone();
    lower.cert_hashes = vec![certificate_hash(&p.a_der).to_ascii_lowercase()];
    let s = IndexSnapshot::new(vec![lower], "lower".into()).expect("snapshot");
    assert!(s.provider_for_certificate(&p.a_der).is_some());

    // rollover: two certificates, two hashes, either one finds the entry
    let mut rollover = p.a.clone();
    rollover.certificates.push(p.stranger_der.clone());
    rollover.cert_hashes.push(certificate_hash(&p.stranger_der));
    let s = IndexSnapshot::new(vec![rollover], "rollover".into()).expect("snapshot");
    assert!(s.provider_for_certificate(&p.a_der).is_some());
    assert!(s.provider_for_certificate(&p.stranger_der).is_some());
}

#[test]
fn snapshot_finds_the_real_aruba_signer() {
    let entries = ldif::parse(&rfc_fixture_text()).expect("fixture");
    let s = IndexSnapshot::new(entries, "fixture".into()).expect("snapshot");
    let der = aruba_signer_der();
    assert_eq!(
        certificate_hash(&der),
        "AAA71BFD2DBC9FE67AA23C9F33AAF3316DF1AA66"
    );
    let e = s
        .provider_for_certificate(&der)
        .expect("Aruba by its certificate");
    assert_eq!(e.name, "ARUBA PEC S.p.A.");
    assert_eq!(e.mail_receipt, "ricevute@pec.aruba.it");
    assert!(e.manages("PEC.aruba.it"));
    assert!(!e.manages("costmec.example.com"));
}

#[test]
fn snapshot_refuses_zero_entries() {
    match IndexSnapshot::new(Vec::new(), "nothing".into()) {
        Err(IndexError::Empty(msg)) => assert!(msg.contains("nothing"), "{msg}"),
        other => panic!("expected Empty, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// A throwaway slapd

/// An OpenLDAP slapd on 127.0.0.1, loaded with `slapadd` before it starts,
/// running in the foreground (`-d 0`) as our child; killed on drop.
struct Slapd {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Slapd {
    fn start(data: &str) -> Slapd {
        let slapd = installed("slapd", "slapd");
        let slapadd = installed("slapadd", "slapd");
        let slaptest = installed("slaptest", "slapd");
        let dir = tempfile::tempdir().expect("tempdir for slapd");
        std::fs::create_dir(dir.path().join("db")).expect("db dir");
        let template = std::fs::read_to_string(root().join("integration/ldap/slapd.conf.template"))
            .expect("read integration/ldap/slapd.conf.template");
        let conf = template
            .replace("@DIR@", &dir.path().display().to_string())
            .replace(
                "@SCHEMA@",
                &root()
                    .join("integration/ldap/igpec.schema")
                    .display()
                    .to_string(),
            );
        let conf_path = dir.path().join("slapd.conf");
        std::fs::write(&conf_path, conf).expect("write slapd.conf");
        let data_path = dir.path().join("data.ldif");
        std::fs::write(&data_path, data).expect("write data.ldif");

        let out = Command::new(&slaptest)
            .arg("-u")
            .arg("-f")
            .arg(&conf_path)
            .output()
            .expect("run slaptest");
        assert!(
            out.status.success(),
            "slaptest -u failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(&slapadd)
            .arg("-f")
            .arg(&conf_path)
            .arg("-l")
            .arg(&data_path)
            .output()
            .expect("run slapadd");
        assert!(
            out.status.success(),
            "slapadd failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let port = free_port();
        let log = std::fs::File::create(dir.path().join("slapd.log")).expect("slapd log");
        let child = Command::new(&slapd)
            .arg("-f")
            .arg(&conf_path)
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{port}/"))
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn slapd");
        let mut s = Slapd {
            child: Some(child),
            port,
            dir,
        };
        s.wait_ready();
        s
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("slapd.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("slapd exited with {status}:\n{}", self.log());
            }
            let addr = ([127, 0, 0, 1], self.port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slapd not listening on port {} after 10 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    fn source(&self) -> LdapSource {
        let mut src = LdapSource::new(self.url());
        src.server.timeout = Duration::from_secs(3);
        src
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fixture (root, Anonymous, Aruba) plus A, B and B's unit.
fn directory_text() -> String {
    let p = providers();
    format!(
        "{}\n{}",
        rfc_fixture_text(),
        ldif::write(&[p.a.clone(), p.b.clone(), p.b_unit.clone()])
    )
}

// ---------------------------------------------------------------------------
// LDAP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_matches_ldif_and_keeps_last_good_copy_when_down() {
    let data = directory_text();
    let mut slapd = Slapd::start(&data);
    let from_ldif = ldif::parse(&data).expect("parse directory");
    assert_eq!(from_ldif.len(), 5);

    let from_ldap = slapd.source().load().await.expect("LDAP load");
    assert_eq!(normalised(from_ldap), normalised(from_ldif.clone()));

    let index = ProviderIndex::new(IndexSource::Ldap(slapd.source()));
    assert!(index.snapshot().is_none());
    assert!(index.age().is_none());
    assert!(matches!(
        index.tipo_destinatario("x@pec.a.test"),
        Err(IndexError::Empty(_))
    ));
    index.refresh().await.expect("refresh from LDAP");
    let snap = index.snapshot().expect("snapshot");
    assert!(snap.source().contains(&slapd.url()), "{}", snap.source());
    assert_eq!(snap.providers().len(), 5);
    assert_eq!(
        index.tipo_destinatario("<Mario@PEC.B.test>").expect("tipo"),
        TipoDestinatario::Certificato
    );
    assert_eq!(
        index
            .tipo_destinatario("someone@gmail.example")
            .expect("tipo"),
        TipoDestinatario::Esterno
    );
    let aruba = snap
        .provider_for_certificate(&aruba_signer_der())
        .expect("Aruba via LDAP");
    assert_eq!(aruba.name, "ARUBA PEC S.p.A.");

    // the server goes away: refresh fails within the timeout, the copy stays
    slapd.stop();
    let age_before = index.age().expect("age");
    let t = Instant::now();
    let err = index.refresh().await.expect_err("refresh with slapd down");
    assert!(
        t.elapsed() < Duration::from_secs(3) + Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(err, IndexError::Ldap(_) | IndexError::Timeout),
        "{err:?}"
    );
    std::thread::sleep(Duration::from_millis(20));
    assert!(index.age().expect("age") > age_before);
    let snap2 = index.snapshot().expect("still the last good copy");
    assert!(Arc::ptr_eq(&snap, &snap2));
    assert_eq!(
        index.tipo_destinatario("x@pec.a.test").expect("tipo"),
        TipoDestinatario::Certificato
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_bind_and_errors() {
    let slapd = Slapd::start(&directory_text());

    let mut src = slapd.source();
    src.server.bind_dn = Some("cn=admin,o=postacert".into());
    src.server.password = Some("secret".into());
    assert_eq!(src.load().await.expect("bound load").len(), 5);
    assert!(!format!("{src:?}").contains("secret"), "password redacted");

    src.server.password = Some("wrong".into());
    match src.load().await {
        Err(IndexError::Ldap(msg)) => assert!(msg.contains("bind"), "{msg}"),
        other => panic!("expected a bind error, got {other:?}"),
    }

    let mut src = slapd.source();
    src.base = "o=elsewhere".into();
    match src.load().await {
        Err(IndexError::Ldap(msg)) => assert!(msg.contains("search"), "{msg}"),
        other => panic!("expected a search error, got {other:?}"),
    }

    // a base with no provider loads nothing; the live index refuses it
    let root_only = "dn: o=postacert\nobjectClass: top\nobjectClass: organization\no: postacert\n";
    let empty = Slapd::start(root_only);
    assert!(empty.source().load().await.expect("load").is_empty());
    let index = ProviderIndex::new(IndexSource::Ldap(empty.source()));
    assert!(matches!(index.refresh().await, Err(IndexError::Empty(_))));
    assert!(index.snapshot().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_silent_server_times_out() {
    // accepts the connection, never answers
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let holder = std::thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().take(1).filter_map(Result::ok).collect();
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let mut src = LdapSource::new(format!("ldap://127.0.0.1:{port}"));
    src.server.timeout = Duration::from_millis(700);
    let t = Instant::now();
    let r = src.load().await;
    assert!(matches!(r, Err(IndexError::Timeout)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    let _ = holder.join();
}

// ---------------------------------------------------------------------------
// The live index on an LDIF file

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldif_index_refreshes_on_trigger_and_keeps_last_good_copy() {
    let p = providers();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("igpec.ldif");
    write_atomically(&path, &ldif::write_directory(std::slice::from_ref(&p.a)));

    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(path.clone())));
    let trigger = Arc::new(tokio::sync::Notify::new());
    let task = index
        .clone()
        .spawn_refresher(Duration::from_secs(3600), trigger.clone());

    // nothing loaded yet: the refresher loads at once
    let deadline = Instant::now() + Duration::from_secs(2);
    while index.snapshot().is_none() {
        assert!(Instant::now() < deadline, "first load did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(index.snapshot().expect("snap").is_certified("pec.a.test"));
    assert!(!index.snapshot().expect("snap").is_certified("pec.b.test"));
    assert!(
        index
            .snapshot()
            .expect("snap")
            .source()
            .contains("igpec.ldif")
    );

    // the file changes, the trigger fires: B appears
    write_atomically(&path, &ldif::write_directory(&[p.a.clone(), p.b.clone()]));
    trigger.notify_one();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !index.snapshot().expect("snap").is_certified("pec.b.test") {
        assert!(Instant::now() < deadline, "B did not appear within 2 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let good = index.snapshot().expect("good copy");

    // broken file: the refresh fails, the copy stays
    write_atomically(
        &path,
        "dn: providerName=B,o=postacert\nobjectClass: provider\nmailReceipt:: %%%\n",
    );
    assert!(matches!(
        index.refresh().await,
        Err(IndexError::Ldif { line: 3, .. })
    ));
    assert!(Arc::ptr_eq(&good, &index.snapshot().expect("snap")));

    // empty directory (root only): refused
    write_atomically(&path, &ldif::write_directory(&[]));
    assert!(matches!(index.refresh().await, Err(IndexError::Empty(_))));
    assert!(Arc::ptr_eq(&good, &index.snapshot().expect("snap")));

    // file gone: refused
    std::fs::remove_file(&path).expect("rm");
    assert!(matches!(index.refresh().await, Err(IndexError::Io { .. })));

    // and through the trigger too
    write_atomically(&path, "garbage without colon\n");
    trigger.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Arc::ptr_eq(&good, &index.snapshot().expect("snap")));
    assert_eq!(
        index
            .tipo_destinatario("anna@mail.pec.b.test")
            .expect("tipo"),
        TipoDestinatario::Certificato
    );
    assert!(index.age().expect("age") >= Duration::from_millis(300));

    task.abort();
}

/// An interval past what the clock holds: the refresher loads, then
/// still answers its trigger (`now + interval` panicked in the task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldif_index_refresher_takes_an_interval_past_the_clock() {
    let p = providers();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("igpec.ldif");
    write_atomically(&path, &ldif::write_directory(std::slice::from_ref(&p.a)));
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(path.clone())));
    let trigger = Arc::new(tokio::sync::Notify::new());
    let task = index
        .clone()
        .spawn_refresher(Duration::MAX, trigger.clone());
    let deadline = Instant::now() + Duration::from_secs(2);
    while index.snapshot().is_none() {
        assert!(Instant::now() < deadline, "first load did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write_atomically(&path, &ldif::write_directory(&[p.a.clone(), p.b.clone()]));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !index.snapshot().expect("snap").is_certified("pec.b.test") {
        assert!(!task.is_finished(), "the refresher stopped");
        assert!(Instant::now() < deadline, "B did not appear within 2 s");
        trigger.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}

/// The attempts a refresher made: when each ended, and whether it loaded.
#[derive(Clone, Default)]
struct Attempts(Arc<std::sync::Mutex<Vec<(Instant, bool)>>>);

impl Attempts {
    fn reporter(&self) -> impl Fn(Result<(), &IndexError>) + Send + Sync + 'static {
        let list = self.0.clone();
        move |r| {
            list.lock()
                .expect("attempts")
                .push((Instant::now(), r.is_ok()))
        }
    }

    fn list(&self) -> Vec<(Instant, bool)> {
        self.0.lock().expect("attempts").clone()
    }

    async fn wait_for(&self, n: usize, within: Duration) -> Vec<(Instant, bool)> {
        let deadline = Instant::now() + within;
        loop {
            let list = self.list();
            if list.len() >= n {
                return list;
            }
            assert!(
                Instant::now() < deadline,
                "{} attempts, not {n}, within {within:?}",
                list.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The schedule: the first retry without a copy at most a minute, the
/// wait doubling up to an hour (the refresh when shorter).
#[test]
fn refresh_schedule_retries_sooner_without_a_copy() {
    let day = RefreshSchedule::new(Duration::from_secs(86_400));
    assert_eq!(day.every, Duration::from_secs(86_400));
    assert_eq!(day.first_retry, FIRST_RETRY);
    assert_eq!(FIRST_RETRY, Duration::from_secs(60));
    assert_eq!(day.max_retry, MAX_RETRY);
    assert_eq!(MAX_RETRY, Duration::from_secs(3600));
    let mut waits = vec![day.first_retry];
    while waits.len() < 10 {
        let next = day.next_retry(*waits.last().expect("a wait"));
        waits.push(next);
    }
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600]);
    // a refresh shorter than a minute: retried at the refresh
    let short = RefreshSchedule::new(Duration::from_secs(20));
    assert_eq!(short.first_retry, Duration::from_secs(20));
    assert_eq!(short.next_retry(short.first_retry), Duration::from_secs(20));
    // between a minute and an hour: up to the refresh
    let ten = RefreshSchedule::new(Duration::from_secs(600));
    assert_eq!(ten.first_retry, Duration::from_secs(60));
    assert_eq!(ten.next_retry(Duration::from_secs(480)), ten.every);
    // bounds
    assert_eq!(
        RefreshSchedule::new(Duration::ZERO).every,
        Duration::from_secs(1)
    );
    assert!(RefreshSchedule::new(Duration::MAX).every < Duration::MAX);
    let fast = day.with_first_retry(Duration::ZERO);
    assert_eq!(fast.first_retry, Duration::from_millis(10));
    assert_eq!(
        short
            .with_first_retry(Duration::from_secs(3600))
            .first_retry,
        short.every
    );
}

/// The file missing at start: retried after the first retry, the wait
/// doubling, not at the (hour-long) refresh; loaded at the next retry once
/// written; then a failed refresh keeps the copy and the hourly schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_copy_the_refresher_retries_sooner_then_keeps_its_schedule() {
    let p = providers();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("igpec.ldif");
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(path.clone())));
    let attempts = Attempts::default();
    let trigger = Arc::new(tokio::sync::Notify::new());
    let first = Duration::from_millis(100);
    let schedule = RefreshSchedule::new(Duration::from_secs(3600)).with_first_retry(first);
    let task =
        index
            .clone()
            .spawn_refresher_scheduled(schedule, trigger.clone(), attempts.reporter());

    // at once, then after 100, 200, 400 ms: each failed
    let list = attempts.wait_for(4, Duration::from_secs(20)).await;
    assert!(list.iter().all(|(_, ok)| !ok), "the file is missing");
    for (i, pair) in list.windows(2).take(3).enumerate() {
        let gap = pair[1].0 - pair[0].0;
        let least = first * 2u32.pow(i as u32);
        assert!(gap >= least, "retry {i}: {gap:?} < {least:?}");
    }
    assert!(index.snapshot().is_none());

    // the file written: loaded at the next retry (at most 800 ms later,
    // well before the hour), every attempt reported once
    let written = Instant::now();
    write_atomically(&path, &ldif::write_directory(std::slice::from_ref(&p.a)));
    let deadline = written + Duration::from_secs(20);
    while index.snapshot().is_none() {
        assert!(Instant::now() < deadline, "not loaded within the retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loaded = attempts.list();
    assert_eq!(loaded.last().map(|(_, ok)| *ok), Some(true), "{loaded:?}");
    assert_eq!(loaded.iter().filter(|(_, ok)| *ok).count(), 1);
    let good = index.snapshot().expect("loaded");

    // a copy in use: no retries any more (the next load in an hour)
    std::fs::remove_file(&path).expect("rm");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        attempts.list().len(),
        loaded.len(),
        "no load before the hour"
    );
    // a failed refresh (asked for) keeps the copy, and the schedule
    trigger.notify_one();
    let failed = attempts
        .wait_for(loaded.len() + 1, Duration::from_secs(20))
        .await;
    assert_eq!(failed.last().map(|(_, ok)| *ok), Some(false));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(attempts.list().len(), failed.len(), "no retry with a copy");
    assert!(Arc::ptr_eq(
        &good,
        &index.snapshot().expect("the copy stays")
    ));
    task.abort();
}

/// A refresher started right after a failed load (the daemon's first load,
/// a reload) counts it as an attempt: its first retry comes `first_retry`
/// after it, not at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresher_after_a_failed_first_load_waits_its_first_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(
        dir.path().join("missing.ldif"),
    )));
    assert!(index.refresh_logged().await.is_err());
    let failed = Instant::now();
    let attempts = Attempts::default();
    let first = Duration::from_millis(300);
    let task = index.clone().spawn_refresher_scheduled(
        RefreshSchedule::new(Duration::from_secs(3600)).with_first_retry(first),
        Arc::new(tokio::sync::Notify::new()),
        attempts.reporter(),
    );
    let list = attempts.wait_for(2, Duration::from_secs(20)).await;
    assert!(
        list[0].0 - failed >= first - Duration::from_millis(10),
        "{:?}",
        list[0].0 - failed
    );
    // the first load was the first retry: the next wait is doubled
    assert!(
        list[1].0 - list[0].0 >= first * 2,
        "{:?}",
        list[1].0 - list[0].0
    );
    task.abort();
}
