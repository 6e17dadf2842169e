//! Replicas as separate OS processes sharing one `redis-server` and one token endpoint: the
//! cross-replica lease makes them share one token request, one renewal, and one renewal for a
//! burst of 401s. This test binary starts copies of itself as the replicas (`replica_process`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{CLIENT, SECRET, server};
use tokenwarden::redis::{RedisTokenCache, RedisUserTokenStore};
use tokenwarden::{
    AccessToken, AccessTokenLayer, CacheKey, ClientConfig, ClientCredentials, ManualClock,
    RefreshTokens, Secret, TokenCache, TokenManager, TokenType, UserKey, UserTokenStore,
    UserTokens,
};
use tokenwarden_testkit::{RedisServer, TestServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const PREFIX: &str = "REPLICA ";

/// One replica process and the pipes to drive it.
struct Replica {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Replica {
    async fn spawn(redis: &RedisServer, server: &TestServer, start_ms: u128) -> Replica {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "replica_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("TW_REPLICA_REDIS", redis.url())
            .env("TW_REPLICA_TOKEN_ENDPOINT", server.token_endpoint())
            .env("TW_REPLICA_API", server.base_url())
            .env("TW_REPLICA_START_MS", start_ms.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the test binary starts as a replica");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut replica = Replica {
            _child: child,
            stdin,
            lines,
        };
        assert_eq!(replica.read().await, "ready");
        replica
    }

    async fn send(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next protocol line (the test harness prints its own lines around ours).
    async fn read(&mut self) -> String {
        let next = async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the replica exited early");
                // The harness may print `test replica_process ... ` on the same line first.
                if let Some((_, message)) = line.split_once(PREFIX) {
                    return message.to_owned();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), next)
            .await
            .expect("the replica answered in time")
    }
}

async fn replicas(n: usize, redis: &RedisServer, server: &TestServer) -> Vec<Replica> {
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let spawning = (0..n).map(|_| Replica::spawn(redis, server, start_ms));
    futures_util::future::join_all(spawning).await
}

/// Sends `command` to every replica at once, then collects one answer from each.
async fn all(replicas: &mut [Replica], command: &str) -> Vec<String> {
    for replica in replicas.iter_mut() {
        replica.send(command).await;
    }
    let mut answers = Vec::new();
    for replica in replicas.iter_mut() {
        answers.push(replica.read().await);
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_replicas_cold_start_and_renew_with_one_token_request_each_time() {
    let redis = RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)");
    let server = server().await;
    server.set_delay(Duration::from_millis(200));
    let mut replicas = replicas(8, &redis, &server).await;

    let first = all(&mut replicas, "token").await;
    assert!(first[0].starts_with("token "), "{first:?}");
    assert!(
        first.iter().all(|t| t == &first[0]),
        "every replica has the same token: {first:?}"
    );
    assert_eq!(
        server.token_requests(CLIENT),
        1,
        "8 cold replicas, one token request"
    );

    // Past the token's expiry on every replica's clock: exactly one renewal between them.
    assert!(
        all(&mut replicas, "advance 3600")
            .await
            .iter()
            .all(|a| a == "advanced")
    );
    let renewed = all(&mut replicas, "token").await;
    assert!(renewed.iter().all(|t| t == &renewed[0]), "{renewed:?}");
    assert_ne!(renewed[0], first[0]);
    assert_eq!(
        server.token_requests(CLIENT),
        2,
        "one renewal for 8 replicas"
    );
    all(&mut replicas, "quit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_401s_across_two_replicas_costs_one_renewal() {
    let redis = RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)");
    let server = server().await;
    let mut replicas = replicas(2, &redis, &server).await;
    let warm = all(&mut replicas, "token").await;
    assert_eq!(warm[0], warm[1]);
    assert_eq!(server.token_requests(CLIENT), 1);

    server.revoke_all();
    let bursts = all(&mut replicas, "burst 200").await;
    assert_eq!(
        bursts,
        vec!["burst ok=200", "burst ok=200"],
        "every request succeeds on replay"
    );
    // Each replica still held the revoked token, so each saw 401s (requests sent after its renewal
    // carry the new token and are not rejected).
    let rejections = server.api_rejections();
    assert!((2..=400).contains(&rejections), "{rejections} rejections");
    assert_eq!(
        server.token_requests(CLIENT),
        2,
        "one renewal for both replicas"
    );
    all(&mut replicas, "quit").await;
}

/// Two replicas serve one signed-in user whose access token has expired: the lease in the Redis
/// user token store lets one of them refresh, and the other reads the rotated tokens. Neither
/// sends the old refresh token a second time, so the server sees no reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_refresh_one_users_tokens_once() {
    let redis = RedisServer::start()
        .await
        .expect("redis-server runs (scripts/test.sh installs it)");
    let server = TestServer::builder()
        .client(CLIENT, SECRET)
        .user("alice", "alice-password")
        .delay(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    // The app signed alice in; by now her access token has expired.
    let signed_in = server.sign_in(CLIENT, "alice");
    let expired = AccessToken::new(signed_in.access_token.as_str(), TokenType::Bearer)
        .unwrap()
        .with_expires_at(SystemTime::now() - Duration::from_secs(1));
    let store = RedisUserTokenStore::builder(&redis.url()).build().unwrap();
    user_manager(&server.token_endpoint(), store, ManualClock::starting_now())
        .sign_in(
            "web",
            &UserKey::new("alice"),
            UserTokens::new(expired, Some(Secret::new(signed_in.refresh_token.as_str()))),
        )
        .await
        .unwrap();

    let mut replicas = replicas(2, &redis, &server).await;
    let tokens = all(&mut replicas, "user alice").await;
    assert!(tokens[0].starts_with("token "), "{tokens:?}");
    assert_eq!(tokens[0], tokens[1], "both replicas send alice's new token");
    assert_eq!(
        server.refresh_requests(CLIENT),
        1,
        "one refresh for two replicas"
    );
    assert_eq!(
        server.reuse_detections(),
        0,
        "no refresh token was sent twice"
    );
    all(&mut replicas, "quit").await;
}

/// A manager with the user client `web` of the test server's client, its users' tokens in
/// `store`.
fn user_manager(endpoint: &str, store: RedisUserTokenStore, clock: ManualClock) -> TokenManager {
    let config = ClientConfig::builder(endpoint, CLIENT)
        .client_secret(SECRET)
        .build()
        .unwrap();
    TokenManager::builder()
        .user_client("web", RefreshTokens::new(config))
        .user_token_store(store)
        .clock(clock)
        .build()
        .unwrap()
}

/// The replica: a token manager with the Redis tier and a layer over a hyper-util client,
/// and a second one for users' tokens in a Redis user token store, driven by lines on stdin.
/// Does nothing unless started by the tests above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started as a separate OS process by the replica tests"]
async fn replica_process() {
    let Ok(redis_url) = std::env::var("TW_REPLICA_REDIS") else {
        return;
    };
    let endpoint = std::env::var("TW_REPLICA_TOKEN_ENDPOINT").unwrap();
    let api = std::env::var("TW_REPLICA_API").unwrap();
    let start_ms: u64 = std::env::var("TW_REPLICA_START_MS")
        .unwrap()
        .parse()
        .unwrap();
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_millis(start_ms));
    let cache = RedisTokenCache::builder(&redis_url)
        .clock(clock.clone())
        .build()
        .unwrap();
    let manager = TokenManager::builder()
        .client(
            CLIENT,
            ClientCredentials::new(
                ClientConfig::builder(&endpoint, CLIENT)
                    .client_secret(SECRET)
                    .build()
                    .unwrap(),
            ),
        )
        .shared_cache(cache.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let layer = AccessTokenLayer::builder(&manager, CLIENT)
        .allow_origin(&api)
        .build()
        .unwrap();
    let client = tower::ServiceBuilder::new()
        .layer(layer)
        .service(common::http_client());
    let store = RedisUserTokenStore::builder(&redis_url).build().unwrap();
    let users = user_manager(&endpoint, store.clone(), clock.clone());
    // Connected to Redis before saying ready, so the cold start races for the token only.
    cache
        .get(&CacheKey::builder("connect").build())
        .await
        .unwrap();
    store
        .get(&CacheKey::builder("connect").build())
        .await
        .unwrap();
    println!("{PREFIX}ready");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("token"), _) => match manager.token(CLIENT).await {
                Ok(token) => println!("{PREFIX}token {}", token.secret().fingerprint()),
                Err(error) => println!("{PREFIX}error {error}"),
            },
            (Some("user"), Some(user)) => {
                match users.user_token("web", &UserKey::new(user)).await {
                    Ok(token) => println!("{PREFIX}token {}", token.secret().fingerprint()),
                    Err(error) => println!("{PREFIX}error {error}"),
                }
            }
            (Some("advance"), Some(secs)) => {
                clock.advance(Duration::from_secs(secs.parse().unwrap()));
                println!("{PREFIX}advanced");
            }
            (Some("burst"), Some(n)) => {
                let n: usize = n.parse().unwrap();
                let sends = (0..n).map(|i| {
                    use tower::ServiceExt;
                    let request = http::Request::get(format!("{api}/api/burst/{i}"))
                        .body(http_body_util::Full::default())
                        .unwrap();
                    client.clone().oneshot(request)
                });
                let results = futures_util::future::join_all(sends).await;
                let ok = results
                    .iter()
                    .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
                    .count();
                println!("{PREFIX}burst ok={ok}");
            }
            (Some("quit"), _) => {
                println!("{PREFIX}bye");
                break;
            }
            _ => println!("{PREFIX}unknown command {line:?}"),
        }
    }
}
