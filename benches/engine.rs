//! `cargo bench`: build + sign a busta di trasporto around 10 KB and 1 MB
//! originals, build + sign an accettazione, and verify an envelope.
//! Figures and the machine's `openssl speed rsa2048` go in BENCHMARKS.md.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pki::Pki;
use pec_milter::crypto::verify::{TrustStore, VerifyAt};
use pec_milter::pec::build::{
    Emission, Provider, Ricevuta, Signer, Transaction, build_busta_trasporto, build_ricevuta,
};
use pec_milter::pec::inspect::check_signature;
use pec_milter::pec::reader::read;
use pec_milter::pec::{Destinatario, TipoDestinatario, TipoRicevuta};

fn original(size: usize) -> Vec<u8> {
    let mut m = b"From: mario.rossi@pec.acme.test\r\nTo: anna@pec.other.test\r\nSubject: bench\r\nMessage-ID: <b.1@client>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nciao\r\n--B\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b"--B--\r\n");
    m
}

fn tx() -> Transaction {
    Transaction {
        identificativo: "opec.bench.1@pec.acme.test".into(),
        mittente: "mario.rossi@pec.acme.test".into(),
        destinatari: vec![Destinatario {
            address: "anna@pec.other.test".into(),
            tipo: TipoDestinatario::Certificato,
        }],
        risposte: "mario.rossi@pec.acme.test".into(),
        oggetto: "bench".into(),
        msgid: Some("<b.1@client>".into()),
        ricevuta: TipoRicevuta::Completa,
    }
}

fn benches(c: &mut Criterion) {
    let pki = Pki::generate("ACME PEC S.p.A.", "pec.acme.test", 30).expect("pki");
    let key = pki.signing_key().expect("key");
    let trust = TrustStore::from_pem_bytes(&[&pki.ca_cert_pem]).expect("trust");
    let provider = Provider {
        name: "ACME PEC S.p.A.".into(),
        domain: "pec.acme.test".into(),
    };
    let time = Utc
        .with_ymd_and_hms(2026, 11, 25, 9, 0, 0)
        .single()
        .expect("time");
    let signer = Signer {
        key: &key,
        digest: DigestAlg::Sha256,
    };
    let tx = tx();

    let mut g = c.benchmark_group("busta_trasporto_build_sign");
    for (label, size) in [("10KB", 10 * 1024), ("1MB", 1024 * 1024)] {
        let orig = original(size);
        g.throughput(Throughput::Bytes(orig.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &orig, |b, orig| {
            b.iter(|| {
                build_busta_trasporto(&provider, &tx, black_box(orig), time, signer)
                    .expect("build")
                    .to_bytes()
            })
        });
    }
    g.finish();

    c.bench_function("accettazione_build_sign", |b| {
        let e = Emission {
            time,
            message_id: "r.1@pec.acme.test".into(),
        };
        b.iter(|| {
            build_ricevuta(&provider, &tx, &Ricevuta::Accettazione, &e, signer)
                .expect("build")
                .to_bytes()
        })
    });

    let mut g = c.benchmark_group("busta_trasporto_read_verify");
    for (label, size) in [("10KB", 10 * 1024), ("1MB", 1024 * 1024)] {
        let env = build_busta_trasporto(&provider, &tx, &original(size), time, signer)
            .expect("build")
            .to_bytes();
        g.throughput(Throughput::Bytes(env.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label), &env, |b, env| {
            b.iter(|| {
                let m = read(black_box(env)).expect("read");
                check_signature(&m, &trust, VerifyAt::SigningTime)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = engine;
    config = Criterion::default().sample_size(30);
    targets = benches
}
criterion_main!(engine);
