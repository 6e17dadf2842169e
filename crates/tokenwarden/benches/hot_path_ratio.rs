//! The two ratios measured side by side, interleaved: the layer against tower-http's
//! `AddAuthorization` with a static value, on a no-op inner service.
//!
//! `cargo bench -p tokenwarden --bench hot_path_ratio`
//!
//! Criterion measures one variant after another, so on a shared VM a drift of the machine's speed
//! between two measurements shows up as a difference between the variants (the static baseline
//! alone moved by ±10 % between runs here). This bench alternates short batches of every variant
//! in rotating order, many rounds, and reports the median of the per-round ratios with the
//! middle half of them, which a drift cannot bias.
//!
//! It also keeps each variant's fastest of many short batches, which interference cannot slow.
//! What neither removes is the process's memory layout: with address randomization every run
//! places stacks and heap differently, and that alone moved the ratios by ±5 % here (a store and
//! a later load 4 KiB apart stall each other). So `cargo bench` runs the measurement in
//! [`LAYOUTS`] processes, one after another, and reports every layout and the median over them.
//! Within a process, the single-thread loops also run at each of [`PHASES`] stack alignments
//! in turn (16 bytes apart, a 64-byte cache line in all): moving the loop's frame by 16 bytes
//! moved the static layer's time by up to 5 % (its request-building copies straddle a cache
//! line or not), and the fastest-batch figures average each variant over the four.
//!
//! - single-thread: time per request of the layer / of the static layer (goal ≤ 1.10);
//! - 2 workers, 64 tasks: throughput of the layer / of the static layer (goal ≥ 0.90).
//!
//! `TOKENWARDEN_BENCH_INNER=client cargo bench -p tokenwarden --bench hot_path_ratio` measures the
//! same over a no-op inner service that carries a hyper-util `Client`, as a layer over a real
//! client does: what clones the inner service per request then writes counts shared by all.
//!
//! `TOKENWARDEN_BENCH_REQUEST=typical` sends a GET with a query and five headers (those a client
//! sets and those a traced service forwards) instead of the one-header GET: the layer's cost
//! against the cost of a request as services send them, where the default measures it against
//! the smallest request there is.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use tower::{Service, ServiceBuilder};

use common::{Fixture, Minimal, Shape, Typical, noop, noop_with_client, send_many_of};

const ROUNDS: usize = 41;
const SINGLE_BATCH: u64 = 20_000;
const TASKS: u64 = 64;
const PER_TASK: u64 = 2_000;
/// The fastest-batch measurement: many short batches, of which each variant's fastest counts.
const SHORT_ROUNDS: usize = 2_000;
const SHORT_BATCH: u64 = 1_000;
/// Stack alignments the single-thread loops run at, 16 bytes apart.
const PHASES: usize = 4;
/// Processes (memory layouts) measured by `cargo bench`.
const LAYOUTS: usize = 8;
/// Set in the processes this bench starts.
const CHILD: &str = "TOKENWARDEN_HOT_PATH_RATIO_CHILD";
/// Selects the inner service: `noop` (the default) or `client` (see [`measure`]).
const INNER: &str = "TOKENWARDEN_BENCH_INNER";
/// Selects the request: `minimal` (the default: [`Minimal`]) or `typical` ([`Typical`]).
const REQUEST: &str = "TOKENWARDEN_BENCH_REQUEST";

/// One process's ratios, layer over static: single-thread time (fastest batches; median of
/// rounds), then 2-worker throughput (median of rounds); default layer, then replay off.
struct Figures {
    fastest: [f64; 2],
    time: [f64; 2],
    throughput: [f64; 2],
}

/// [`single`] with its frame moved down the stack by `phase` × 16 bytes.
fn single_at<R: Shape, S>(phase: usize, service: &mut S, uri: &Uri, count: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    match phase % PHASES {
        0 => below::<1, _>(|| single::<R, S>(service, uri, count)),
        1 => below::<17, _>(|| single::<R, S>(service, uri, count)),
        2 => below::<33, _>(|| single::<R, S>(service, uri, count)),
        _ => below::<49, _>(|| single::<R, S>(service, uri, count)),
    }
}

/// Runs `f` below `N` bytes of this frame (rounded up to 16).
#[inline(never)]
fn below<const N: usize, R>(f: impl FnOnce() -> R) -> R {
    let pad = std::hint::black_box([0u8; N]);
    let r = f();
    std::hint::black_box(&pad);
    r
}

/// Sends `count` requests one at a time, polling each response future once.
#[inline(never)]
fn single<R: Shape, S>(service: &mut S, uri: &Uri, count: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    send_many_of::<R, S>(service, uri, count);
    start.elapsed()
}

/// `TASKS` tasks on the runtime each send `PER_TASK` requests through their own clone.
fn concurrent<R: Shape, S>(rt: &tokio::runtime::Runtime, service: &S, uri: &Uri) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let (mut service, uri) = (service.clone(), uri.to_string().parse::<Uri>().unwrap());
                tokio::spawn(async move {
                    for _ in 0..PER_TASK {
                        std::future::poll_fn(|cx| service.poll_ready(cx))
                            .await
                            .unwrap();
                        std::hint::black_box(service.call(R::request(&uri)).await.unwrap());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        start.elapsed()
    })
}

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median and the middle half of `ratios`.
fn summary(ratios: &[f64]) -> String {
    let mut ratios = ratios.to_vec();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.3} (middle half {:.3}–{:.3}, all {:.3}–{:.3})",
        at(0.5),
        at(0.25),
        at(0.75),
        at(0.0),
        at(1.0)
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then one short round.
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        measure(1);
        return;
    }
    if std::env::var_os(CHILD).is_some() {
        let f = measure(ROUNDS);
        println!(
            "figures {} {} {} {} {} {}",
            f.fastest[0], f.fastest[1], f.time[0], f.time[1], f.throughput[0], f.throughput[1]
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut all = Vec::new();
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    println!(
        "layer / static, {LAYOUTS} processes (memory layouts); request {}, inner service {}:",
        setting(REQUEST, "minimal"),
        setting(INNER, "noop")
    );
    println!(
        "  fastest batches: default, replay off | median of rounds: default, replay off | 2-worker throughput: default, replay off"
    );
    for _ in 0..LAYOUTS {
        let out = std::process::Command::new(&exe)
            .arg("--bench")
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "a measuring process failed");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("figures "))
            .unwrap();
        let v: Vec<f64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        println!(
            "  {:.3}, {:.3} | {:.3}, {:.3} | {:.3}, {:.3}",
            v[0], v[1], v[2], v[3], v[4], v[5]
        );
        all.push(v);
    }
    let column = |i: usize| median(&all.iter().map(|v| v[i]).collect::<Vec<_>>());
    println!(
        "median over layouts: single-thread time (fastest batches) default {:.3}, replay off {:.3}; \
         (median of rounds) default {:.3}, replay off {:.3}; 2-worker throughput default {:.3}, replay off {:.3}",
        column(0),
        column(1),
        column(2),
        column(3),
        column(4),
        column(5)
    );
}

/// Measures every variant in this process; prints what it found and returns the ratios.
/// Measures every variant over the inner service [`INNER`] names: the no-op service, or with
/// `client` the no-op service carrying a hyper-util `Client` (whose clones share counts).
fn measure(rounds: usize) -> Figures {
    let typical = match std::env::var(REQUEST).as_deref() {
        Ok("typical") => true,
        Ok("minimal") | Err(_) => false,
        Ok(other) => panic!("{REQUEST}={other}: expected `minimal` or `typical`"),
    };
    match (std::env::var(INNER).as_deref(), typical) {
        (Ok("client"), false) => measure_over::<Minimal, _>(rounds, noop_with_client),
        (Ok("client"), true) => measure_over::<Typical, _>(rounds, noop_with_client),
        (Ok("noop") | Err(_), false) => measure_over::<Minimal, _>(rounds, noop),
        (Ok("noop") | Err(_), true) => measure_over::<Typical, _>(rounds, noop),
        (Ok(other), _) => panic!("{INNER}={other}: expected `noop` or `client`"),
    }
}

fn measure_over<R: Shape, S>(rounds: usize, inner: impl Fn() -> S) -> Figures
where
    S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send + Sync + std::error::Error + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixture = Fixture::start(&rt);
    let uri = R::uri(&fixture.uri);
    let mut fixed = ServiceBuilder::new()
        .layer(fixture.static_layer(&rt))
        .service(inner());
    let mut default = ServiceBuilder::new()
        .layer(fixture.layer(&fixture.manager, true))
        .service(inner());
    let mut no_replay = ServiceBuilder::new()
        .layer(fixture.layer(&fixture.manager, false))
        .service(inner());

    // Warm-up: caches, branch predictors, the per-thread stash.
    single::<R, _>(&mut fixed, &uri, SINGLE_BATCH);
    single::<R, _>(&mut default, &uri, SINGLE_BATCH);
    single::<R, _>(&mut no_replay, &uri, SINGLE_BATCH);

    let (mut time_default, mut time_no_replay) = (Vec::new(), Vec::new());
    let (mut throughput_default, mut throughput_no_replay) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Rotate the order so no variant always runs first or last.
        let mut t = [Duration::ZERO; 3];
        for k in 0..3 {
            let v = (round + k) % 3;
            t[v] = match v {
                0 => single_at::<R, _>(round, &mut fixed, &uri, SINGLE_BATCH),
                1 => single_at::<R, _>(round, &mut default, &uri, SINGLE_BATCH),
                _ => single_at::<R, _>(round, &mut no_replay, &uri, SINGLE_BATCH),
            };
        }
        time_default.push(t[1].as_secs_f64() / t[0].as_secs_f64());
        time_no_replay.push(t[2].as_secs_f64() / t[0].as_secs_f64());
        let mut c = [Duration::ZERO; 3];
        for k in 0..3 {
            let v = (round + k) % 3;
            c[v] = match v {
                0 => concurrent::<R, _>(&rt, &fixed, &uri),
                1 => concurrent::<R, _>(&rt, &default, &uri),
                _ => concurrent::<R, _>(&rt, &no_replay, &uri),
            };
        }
        // Same number of requests each: throughput ratio = static time / layer time.
        throughput_default.push(c[0].as_secs_f64() / c[1].as_secs_f64());
        throughput_no_replay.push(c[0].as_secs_f64() / c[2].as_secs_f64());
    }
    // The fastest of many short batches: a batch that another process or an interrupt slowed
    // down never counts, so this ratio moves least from run to run on a shared machine.
    let mut fastest_at = [[Duration::MAX; 3]; PHASES];
    for round in 0..rounds * SHORT_ROUNDS / ROUNDS {
        let phase = round % PHASES;
        for k in 0..3 {
            let v = (round / PHASES + k) % 3;
            let t = match v {
                0 => single_at::<R, _>(phase, &mut fixed, &uri, SHORT_BATCH),
                1 => single_at::<R, _>(phase, &mut default, &uri, SHORT_BATCH),
                _ => single_at::<R, _>(phase, &mut no_replay, &uri, SHORT_BATCH),
            };
            fastest_at[phase][v] = fastest_at[phase][v].min(t);
        }
    }
    // Each variant's fastest batch at each alignment, averaged over the alignments.
    let fastest: [Duration; 3] =
        std::array::from_fn(|v| fastest_at.iter().map(|f| f[v]).sum::<Duration>() / PHASES as u32);
    println!("{rounds} rounds, interleaved; layer vs tower-http AddAuthorization (static value)");
    let per_request = |t: Duration| t.as_nanos() as f64 / SHORT_BATCH as f64;
    println!(
        "single-thread, fastest of {} batches of {SHORT_BATCH} (mean over {PHASES} stack alignments): static {:.1} ns, default layer {:.1} ns ({:.3}), replay off {:.1} ns ({:.3})",
        rounds * SHORT_ROUNDS / ROUNDS,
        per_request(fastest[0]),
        per_request(fastest[1]),
        fastest[1].as_secs_f64() / fastest[0].as_secs_f64(),
        per_request(fastest[2]),
        fastest[2].as_secs_f64() / fastest[0].as_secs_f64(),
    );
    println!(
        "single-thread time ratio, default layer:    {}",
        summary(&time_default)
    );
    println!(
        "single-thread time ratio, replay off:       {}",
        summary(&time_no_replay)
    );
    println!(
        "2-worker throughput ratio, default layer:   {}",
        summary(&throughput_default)
    );
    let figures = Figures {
        fastest: [
            fastest[1].as_secs_f64() / fastest[0].as_secs_f64(),
            fastest[2].as_secs_f64() / fastest[0].as_secs_f64(),
        ],
        time: [median(&time_default), median(&time_no_replay)],
        throughput: [median(&throughput_default), median(&throughput_no_replay)],
    };
    println!(
        "2-worker throughput ratio, replay off:      {}",
        summary(&throughput_no_replay)
    );
    figures
}
