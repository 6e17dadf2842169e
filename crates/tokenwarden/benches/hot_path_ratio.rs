//! The goals in one run, side by side: the layer (default, and without replay) against
//! tower-http's `AddAuthorization` with the same token as a fixed value.
//!
//! `cargo bench -p tokenwarden --bench hot_path_ratio`
//!
//! - single-thread: time per request on a no-op inner service, one request at a time;
//! - 2 workers: throughput of 64 tasks, each with its own service clone, on a 2-worker runtime,
//!   over the no-op inner service;
//! - real client: latency over a hyper-util client to the test kit's API on loopback, one
//!   request at a time, the answer read in full.
//!
//! Every round runs a short batch of each variant, in an order that rotates from round to
//! round, and takes the ratios within the round; the figure is the median over the rounds. A
//! drift of the machine's speed then moves the three variants of a round alike, and a batch
//! that another process slowed moves one round's ratio, which the median ignores. Over the real
//! client, where a request takes tens of microseconds, the variants take turns request by
//! request, and a round compares their median latencies. The middle half of the rounds' ratios shows how much they spread; each variant's
//! fastest round, what it costs undisturbed.
//!
//! `TOKENWARDEN_BENCH_REQUEST=typical` sends a GET with a query and five headers instead of the
//! one-header GET: the layer's cost against a request as services send them.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    Fixture, Minimal, Shape, Typical, concurrent, http_client, noop, real_client, single_thread,
};
use tower::Layer;

/// How much each round measures.
struct Sizes {
    rounds: usize,
    /// Requests per single-thread batch.
    single: u64,
    /// Tasks, and requests per task, of a 2-worker batch.
    tasks: u64,
    per_task: u64,
    /// Requests per variant and round over the real client.
    client: u64,
}

/// About 15 seconds on 2 idle cores.
const BENCH: Sizes = Sizes {
    rounds: 300,
    single: 2_000,
    tasks: 64,
    per_task: 200,
    client: 100,
};

/// `cargo test --benches`: one short round, to see that it runs.
const SMOKE: Sizes = Sizes {
    rounds: 1,
    single: 100,
    tasks: 4,
    per_task: 10,
    client: 5,
};

const VARIANTS: [&str; 3] = ["static", "default", "no-replay"];

/// What a goal bounds: time (the layer's over the static layer's, at most the bound) or
/// throughput (at least the bound).
#[derive(Clone, Copy)]
enum Goal {
    TimeAtMost(f64),
    ThroughputAtLeast(f64),
}

/// A round of a measure: given the round's number, the time the static, default and no-replay
/// variants took for the same work.
type Round<'a> = Box<dyn FnMut(usize) -> [Duration; 3] + 'a>;

/// One batch of each variant, in an order that rotates with the round.
fn rotating<'a>(mut batches: [Box<dyn FnMut() -> Duration + 'a>; 3]) -> Round<'a> {
    Box::new(move |round| {
        let mut times = [Duration::ZERO; 3];
        for k in 0..3 {
            let v = (round + k) % 3;
            times[v] = (batches[v])();
        }
        times
    })
}

/// One measure: how a round runs, the goals for the layer variants, and what was found.
struct Measure<'a> {
    name: &'static str,
    /// Requests per variant and round: what a round's time is divided by for the time per
    /// request.
    requests: u64,
    run: Round<'a>,
    goals: [Goal; 2],
    /// Per round, each layer variant's time over the static one's.
    ratios: [Vec<f64>; 2],
    fastest: [Duration; 3],
}

impl<'a> Measure<'a> {
    fn new(name: &'static str, requests: u64, goals: [Goal; 2], run: Round<'a>) -> Self {
        Measure {
            name,
            requests,
            run,
            goals,
            ratios: [Vec::new(), Vec::new()],
            fastest: [Duration::MAX; 3],
        }
    }

    fn round(&mut self, round: usize) {
        let times = (self.run)(round);
        for (fastest, time) in self.fastest.iter_mut().zip(times) {
            *fastest = (*fastest).min(time);
        }
        for layer in 0..2 {
            let ratio = times[layer + 1].as_secs_f64() / times[0].as_secs_f64();
            self.ratios[layer].push(ratio);
        }
    }

    /// Forgets the rounds so far (the warm-up).
    fn reset(&mut self) {
        self.ratios = [Vec::new(), Vec::new()];
        self.fastest = [Duration::MAX; 3];
    }

    fn report(&self) {
        for (layer, goal) in self.goals.iter().enumerate() {
            // Throughput ratio = static time / layer time, for the same number of requests.
            let mut ratios: Vec<f64> = match goal {
                Goal::TimeAtMost(_) => self.ratios[layer].clone(),
                Goal::ThroughputAtLeast(_) => self.ratios[layer].iter().map(|r| 1.0 / r).collect(),
            };
            ratios.sort_by(f64::total_cmp);
            let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
            let median = at(0.5);
            let (what, sign, bound, met) = match *goal {
                Goal::TimeAtMost(bound) => ("time", "≤", bound, median <= bound),
                Goal::ThroughputAtLeast(bound) => ("throughput", "≥", bound, median >= bound),
            };
            println!(
                "{:<10} {:<13} {:<10} {:>6.3}   {:.3}–{:.3}   {sign} {bound:.2}   {}",
                VARIANTS[layer + 1],
                self.name,
                what,
                median,
                at(0.25),
                at(0.75),
                if met { "PASS" } else { "MISS" },
            );
        }
    }

    fn report_fastest(&self) {
        let per_request = |t: Duration| {
            let ns = t.as_nanos() as f64 / self.requests as f64;
            if ns >= 10_000.0 {
                format!("{:.1} µs", ns / 1000.0)
            } else {
                format!("{ns:.1} ns")
            }
        };
        println!(
            "  {:<13} static {}, default {}, no-replay {}",
            self.name,
            per_request(self.fastest[0]),
            per_request(self.fastest[1]),
            per_request(self.fastest[2]),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let sizes = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        println!(
            "smoke run (no --bench): one short round, to see that it runs; its figures mean nothing"
        );
        SMOKE
    };
    match std::env::var("TOKENWARDEN_BENCH_REQUEST").as_deref() {
        Ok("minimal") | Err(_) => run::<Minimal>("minimal (a GET with one header)", &sizes),
        Ok("typical") => run::<Typical>("typical (a GET with a query and five headers)", &sizes),
        Ok(other) => panic!("TOKENWARDEN_BENCH_REQUEST={other}: expected `minimal` or `typical`"),
    }
}

fn run<R: Shape>(request: &str, sizes: &Sizes) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fixture = rt.block_on(Fixture::start());
    let uri = R::uri(&fixture.uri);
    let static_layer = rt.block_on(fixture.static_layer());
    let default_layer = fixture.layer(&fixture.manager);
    let no_replay_layer = fixture.no_replay_layer(&fixture.manager);
    let rt = &rt;
    let uri = &uri;

    let mut fixed = static_layer.layer(noop());
    let mut default = default_layer.layer(noop());
    let mut no_replay = no_replay_layer.layer(noop());
    let count = sizes.single;
    let single = Measure::new(
        "single-thread",
        count,
        [Goal::TimeAtMost(1.25), Goal::TimeAtMost(1.10)],
        rotating([
            Box::new(move || single_thread::<R, _>(&mut fixed, uri, count)),
            Box::new(move || single_thread::<R, _>(&mut default, uri, count)),
            Box::new(move || single_thread::<R, _>(&mut no_replay, uri, count)),
        ]),
    );

    let fixed = static_layer.layer(noop());
    let default = default_layer.layer(noop());
    let no_replay = no_replay_layer.layer(noop());
    let (tasks, per_task) = (sizes.tasks, sizes.per_task);
    let workers = Measure::new(
        "2 workers",
        tasks * per_task,
        [Goal::ThroughputAtLeast(0.90), Goal::ThroughputAtLeast(0.90)],
        rotating([
            Box::new(move || rt.block_on(concurrent::<R, _>(&fixed, uri, tasks, per_task))),
            Box::new(move || rt.block_on(concurrent::<R, _>(&default, uri, tasks, per_task))),
            Box::new(move || rt.block_on(concurrent::<R, _>(&no_replay, uri, tasks, per_task))),
        ]),
    );

    // One client for all three: the same connection pool, so the same keep-alive connection.
    let client = http_client();
    let mut fixed = static_layer.layer(client.clone());
    let mut default = default_layer.layer(client.clone());
    let mut no_replay = no_replay_layer.layer(client);
    let count = sizes.client;
    // A round's figure is each variant's median latency: per request already.
    let client = Measure::new(
        "real client",
        1,
        [Goal::TimeAtMost(1.02), Goal::TimeAtMost(1.02)],
        Box::new(move |round| {
            let services = (&mut fixed, &mut default, &mut no_replay);
            rt.block_on(real_client::<R, _, _, _, _, _, _>(
                services, uri, count, round,
            ))
        }),
    );

    let mut measures = [single, workers, client];
    // A round to warm up caches, connections and the allocator; not counted.
    for measure in &mut measures {
        measure.round(0);
        measure.reset();
    }
    for round in 0..sizes.rounds {
        for measure in &mut measures {
            measure.round(round);
        }
    }

    println!();
    println!(
        "tokenwarden layer vs tower-http AddAuthorization (static token): median of {} interleaved rounds",
        sizes.rounds
    );
    println!("request: {request}");
    println!();
    println!(
        "{:<10} {:<13} {:<10} {:>6}   {:<11}   {:<6}   result",
        "variant", "measure", "ratio of", "median", "middle half", "goal"
    );
    for measure in &measures {
        measure.report();
    }
    println!();
    println!("per request, fastest round:");
    for measure in &measures {
        measure.report_fastest();
    }
}
