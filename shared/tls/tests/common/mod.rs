//! Helpers shared by the mesh-tls integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_tls::{CertificateAuthority, HboneTls, Identity, WorkloadCert};

pub const TRUST_DOMAIN: &str = "cluster.local";

pub fn identity(ns: &str, sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, ns, sa).unwrap()
}

pub fn issue(ca: &CertificateAuthority, id: &Identity) -> WorkloadCert {
    ca.issue_workload_cert(id).unwrap()
}

/// HBONE TLS for `cert`, trusting `ca`'s root, accepting clients of `TRUST_DOMAIN`.
pub fn hbone(ca: &CertificateAuthority, cert: &WorkloadCert) -> Arc<HboneTls> {
    Arc::new(HboneTls::from_workload_cert(ca.root_pem(), cert).unwrap())
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("mesh-tls-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `fut` on a monoio io_uring runtime (the data plane's driver), with a generous hang
/// guard so a broken test fails instead of hanging CI.
pub fn run<F: std::future::Future<Output = ()>>(fut: F) {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime");
    rt.block_on(async move {
        monoio::time::timeout(Duration::from_secs(120), fut)
            .await
            .expect("test hung for 120 s");
    });
}

/// Deterministic pseudo-random bytes (xorshift64*), so both sides can agree on content.
pub fn fill_pseudo_random(seed: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let mut x = *seed;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *seed = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// An order-sensitive checksum (FNV-1a over 8-byte words), fed incrementally.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checksum {
    pub hash: u64,
    pub len: u64,
    carry: [u8; 8],
    carry_len: usize,
}

impl Checksum {
    pub fn new() -> Self {
        Checksum {
            hash: 0xcbf2_9ce4_8422_2325,
            ..Default::default()
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = (8 - self.carry_len).min(data.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&data[..take]);
            self.carry_len += take;
            data = &data[take..];
            if self.carry_len == 8 {
                self.mix(u64::from_le_bytes(self.carry));
                self.carry_len = 0;
            }
        }
    }

    fn mix(&mut self, word: u64) {
        self.hash ^= word;
        self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
    }

    pub fn finish(mut self) -> (u64, u64) {
        if self.carry_len > 0 {
            let mut last = [0u8; 8];
            last[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
            self.mix(u64::from_le_bytes(last) ^ (self.carry_len as u64) << 56);
        }
        (self.hash, self.len)
    }
}
