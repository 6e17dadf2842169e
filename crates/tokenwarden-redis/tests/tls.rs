//! `rediss://` against a real TLS redis-server whose certificate comes from a private CA made
//! for the test: trusted through `tls_root_certificates`, refused without it.
#![cfg(feature = "tls-rustls")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokenwarden_core::{
    AccessToken, CacheKey, CachedToken, Secret, TokenCache, TokenType, UserTokenStore, UserTokens,
};
use tokenwarden_redis::{RedisTokenCache, RedisUserTokenStore};
use tokenwarden_testkit::RedisServer;

struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

/// A CA and a server certificate for 127.0.0.1, written where redis-server can read them.
fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tokenwarden test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let unique = format!(
        "tokenwarden-tls-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let dir = std::env::temp_dir().join(unique);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca_pem: ca.pem(),
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_server(pki: &Pki) -> (RedisServer, u16) {
    let tls_port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |f: &str| pki.dir.join(f).to_string_lossy().into_owned();
    let (port, cert, key, ca) = (
        tls_port.to_string(),
        path("server.pem"),
        path("server.key"),
        path("ca.pem"),
    );
    let server = RedisServer::start_with_args(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])
    .await
    .expect("redis-server with TLS support runs");
    (server, tls_port)
}

fn token() -> CachedToken {
    let now = SystemTime::now();
    let token = AccessToken::new("tk_over_tls", TokenType::Bearer).unwrap();
    CachedToken::new(
        token,
        now + Duration::from_secs(600),
        now + Duration::from_secs(540),
    )
}

#[tokio::test]
async fn rediss_with_a_private_ca_works_when_the_ca_is_trusted() {
    let pki = pki();
    let (_server, tls_port) = tls_server(&pki).await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let key = CacheKey::builder("billing").build();

    let trusted = RedisTokenCache::builder(&url)
        .op_timeout(Duration::from_secs(2))
        .tls_root_certificates(pki.ca_pem.as_bytes())
        .build()
        .unwrap();
    trusted.put(&key, &token()).await.unwrap();
    let read = trusted.get(&key).await.unwrap().expect("stored over TLS");
    assert_eq!(read.token().expose_secret(), "tk_over_tls");
    assert!(
        !format!("{trusted:?}").contains("BEGIN"),
        "no certificate material in Debug"
    );

    // With only the public roots the server's certificate is not trusted: an error, not a hang.
    let untrusted = RedisTokenCache::builder(&url)
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(untrusted.get(&key).await.is_err());
}

#[tokio::test]
async fn a_user_token_store_takes_the_same_tls_settings() {
    let pki = pki();
    let (_server, tls_port) = tls_server(&pki).await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let key = CacheKey::builder("web")
        .hashed_part("user", "alice")
        .build();
    let tokens = UserTokens::new(
        AccessToken::new("at_over_tls", TokenType::Bearer).unwrap(),
        Some(Secret::new("rt_over_tls")),
    );

    let trusted = RedisUserTokenStore::builder(&url)
        .op_timeout(Duration::from_secs(2))
        .tls_root_certificates(pki.ca_pem.as_bytes())
        .build()
        .unwrap();
    trusted.put(&key, &tokens).await.unwrap();
    assert_eq!(trusted.get(&key).await.unwrap(), Some(tokens));

    let untrusted = RedisUserTokenStore::builder(&url)
        .op_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(untrusted.get(&key).await.is_err());
}
