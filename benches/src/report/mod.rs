//! `latest.md` and `latest.svg` from the JSON lines of one run.
//!
//! Conventions the report relies on (compare.sh follows them):
//! 1. The baseline is the system labelled [`Roles::baseline`] (`jetstream`); every ratio is
//!    against its figure for the same workload, size and shape.
//! 2. A Drawbridge label ends in `-sync` (fsync before ack) or `-lazy` (the lazy policy); the
//!    report pairs `X-lazy` with `X-sync` to tell whether the lazy policy changed anything.
//! 3. Throughput ratios are "× baseline" (higher is better); latency ratios are "÷ baseline"
//!    (lower is better), so a goal reads the same way in both: ≥ or ≤ a number.

pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::record::{Measurement, Record};

/// Which systems play which part in the goals.
#[derive(Debug, Clone)]
pub struct Roles {
    /// The competitor every ratio is taken against.
    pub baseline: String,
    /// The 3-node RF 3 ack-ALL cluster.
    pub cluster: String,
    /// The single node the cluster is compared with (same NATS, same sync policy).
    pub single: String,
}

/// Records of one run, indexed.
#[derive(Debug)]
struct Run<'a> {
    systems: Vec<String>,
    results: Vec<&'a Measurement>,
}

/// Key of a comparable figure: workload, size, publishers, window.
type Shape = (String, usize, usize, usize);

fn shape(m: &Measurement) -> Shape {
    (m.workload.clone(), m.size, m.publishers, m.window)
}

impl<'a> Run<'a> {
    fn new(records: &'a [Record]) -> Self {
        let mut systems: Vec<String> = Vec::new();
        let mut add = |s: &str| {
            if !systems.iter().any(|x| x == s) {
                systems.push(s.to_owned());
            }
        };
        let mut results = Vec::new();
        for r in records {
            match r {
                Record::System { system, .. } => add(system),
                Record::Result(m) => {
                    add(&m.system);
                    results.push(m);
                }
                _ => {}
            }
        }
        Run { systems, results }
    }

    fn find(&self, system: &str, s: &Shape) -> Option<&'a Measurement> {
        self.results
            .iter()
            .copied()
            .find(|m| m.system == system && &shape(m) == s)
    }

    fn of(&self, workload: &str) -> Vec<&'a Measurement> {
        let mut v: Vec<&Measurement> = self
            .results
            .iter()
            .copied()
            .filter(|m| m.workload == workload)
            .collect();
        let pos = |s: &str| {
            self.systems
                .iter()
                .position(|x| x == s)
                .unwrap_or(usize::MAX)
        };
        v.sort_by_key(|m| (m.size, m.publishers, m.window, pos(&m.system)));
        v
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn ratio(x: f64, base: Option<f64>) -> Option<f64> {
    match base {
        Some(b) if b > 0.0 => Some(x / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}"))
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn mib(kb: u64) -> String {
    format!("{:.0} MiB", kb as f64 / 1024.0)
}

/// The markdown report.
pub fn markdown(records: &[Record], roles: &Roles, title: &str) -> String {
    let run = Run::new(records);
    let base = roles.baseline.as_str();
    let mut out = String::new();
    let _ = writeln!(out, "# {title}\n");
    for r in records {
        if let Record::Note { text } = r {
            let _ = writeln!(out, "- {text}");
        }
    }
    out.push('\n');

    // Hardware.
    let hw: Vec<Vec<String>> = records
        .iter()
        .filter_map(|r| match r {
            Record::Hw {
                probe,
                value,
                unit,
                detail,
            } => Some(vec![
                probe.clone(),
                format!("{value:.0} {unit}"),
                detail.clone(),
            ]),
            _ => None,
        })
        .collect();
    if !hw.is_empty() {
        let _ = writeln!(out, "## Hardware baselines (same run)\n");
        table(&mut out, &["probe", "value", "how"], &hw);
    }

    // Systems and memory.
    let _ = writeln!(out, "## Systems\n");
    let mut rows = Vec::new();
    for sys in &run.systems {
        let (desc, dur) = records
            .iter()
            .find_map(|r| match r {
                Record::System {
                    system,
                    description,
                    durability,
                } if system == sys => Some((description.clone(), durability.clone())),
                _ => None,
            })
            .unwrap_or_default();
        let rss: Vec<String> = records
            .iter()
            .filter_map(|r| match r {
                Record::Rss {
                    system,
                    process,
                    max_rss_kb,
                    hwm_kb,
                    max_anon_kb,
                } if system == sys => Some(format!(
                    "{process}: {} (peak {}{})",
                    mib(*max_rss_kb),
                    mib(*hwm_kb),
                    if *max_anon_kb > 0 {
                        format!("; anonymous {}", mib(*max_anon_kb))
                    } else {
                        String::new()
                    }
                )),
                _ => None,
            })
            .collect();
        rows.push(vec![
            format!("`{sys}`"),
            desc,
            dur,
            if rss.is_empty() {
                "–".into()
            } else {
                rss.join("; ")
            },
        ]);
    }
    table(
        &mut out,
        &[
            "system",
            "what runs",
            "durability at ack",
            "resident memory under load (max sampled VmRSS; VmHWM; max sampled RssAnon, i.e. without mapped file pages)",
        ],
        &rows,
    );

    lazy_notes(&mut out, &run);

    // Sync publish.
    let _ = writeln!(
        out,
        "## Synchronous publish (1 publisher, 1 message in flight)\n\nLatency send → ack, ms. Ratios are ÷ `{base}` (≤ 1 is as fast or faster).\n"
    );
    let rows: Vec<Vec<String>> = run
        .of("sync")
        .iter()
        .map(|m| {
            let b = run.find(base, &shape(m));
            vec![
                format!("`{}`", m.system),
                m.size.to_string(),
                format!("{:.0}", m.msgs_per_sec),
                ms(m.p50_us),
                ms(m.p99_us),
                ms(m.p999_us),
                fmt_ratio(ratio(m.p50_us as f64, b.map(|b| b.p50_us as f64))),
                fmt_ratio(ratio(m.p99_us as f64, b.map(|b| b.p99_us as f64))),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "system",
            "size B",
            "msgs/s",
            "p50",
            "p99",
            "p99.9",
            "p50 ÷ JS",
            "p99 ÷ JS",
        ],
        &rows,
    );

    // Pipelined.
    let _ = writeln!(
        out,
        "## Pipelined publish (P publishers × W in flight)\n\nAck latency in ms. \"× JS\" is msgs/s ÷ `{base}`'s for the same size and P × W. Server CPU: user + system time per acked message of drawbridge-server (all three nodes of a cluster; not the nats-server it uses) or, for JetStream, nats-server.\n"
    );
    let rows: Vec<Vec<String>> = run
        .of("pipelined")
        .iter()
        .map(|m| {
            let b = run.find(base, &shape(m));
            vec![
                format!("`{}`", m.system),
                m.size.to_string(),
                format!("{}×{}", m.publishers, m.window),
                format!("{:.0}", m.msgs_per_sec),
                format!("{:.1}", m.mb_per_sec),
                ms(m.p50_us),
                ms(m.p99_us),
                ms(m.p999_us),
                m.errors.to_string(),
                fmt_ratio(ratio(m.msgs_per_sec, b.map(|b| b.msgs_per_sec))),
                m.server_cpu_us.map_or("–".into(), |c| format!("{c:.1}")),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "system",
            "size B",
            "P×W",
            "msgs/s",
            "MB/s",
            "p50",
            "p99",
            "p99.9",
            "errors",
            "× JS",
            "server CPU µs/msg",
        ],
        &rows,
    );

    // Consume.
    let _ = writeln!(out, "## Consume from the earliest offset\n");
    let rows: Vec<Vec<String>> = run
        .of("consume")
        .iter()
        .map(|m| {
            let b = run.find(base, &shape(m));
            vec![
                format!("`{}`", m.system),
                m.size.to_string(),
                m.messages.to_string(),
                format!("{:.0}", m.msgs_per_sec),
                format!("{:.1}", m.mb_per_sec),
                fmt_ratio(ratio(m.msgs_per_sec, b.map(|b| b.msgs_per_sec))),
                m.server_cpu_us.map_or("–".into(), |c| format!("{c:.2}")),
                m.loadgen_cpu_us.map_or("–".into(), |c| format!("{c:.2}")),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "CPU µs/msg: user + system time per message read, of the server process(es) and of the \
         load generator, over the reported round.\n"
    );
    table(
        &mut out,
        &[
            "system",
            "size B",
            "messages",
            "msgs/s",
            "MB/s",
            "× JS",
            "server CPU µs/msg",
            "loadgen CPU µs/msg",
        ],
        &rows,
    );

    // End to end.
    let _ = writeln!(
        out,
        "## Publish-to-subscriber latency under steady load\n\nms, from send to receipt by a subscriber in the same process.\n"
    );
    let rows: Vec<Vec<String>> = run
        .of("e2e")
        .iter()
        .map(|m| {
            let b = run.find(base, &shape(m));
            vec![
                format!("`{}`", m.system),
                m.size.to_string(),
                m.rate.to_string(),
                m.messages.to_string(),
                m.errors.to_string(),
                ms(m.p50_us),
                ms(m.p99_us),
                fmt_ratio(ratio(m.p50_us as f64, b.map(|b| b.p50_us as f64))),
                fmt_ratio(ratio(m.p99_us as f64, b.map(|b| b.p99_us as f64))),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "system",
            "size B",
            "rate/s",
            "received",
            "lost",
            "p50",
            "p99",
            "p50 ÷ JS",
            "p99 ÷ JS",
        ],
        &rows,
    );

    goals(&mut out, &run, roles);

    let errors: Vec<Vec<String>> = records
        .iter()
        .filter_map(|r| match r {
            Record::Error {
                system,
                workload,
                size,
                message,
            } => Some(vec![
                format!("`{system}`"),
                workload.clone(),
                size.to_string(),
                message.replace('|', "\\|").replace('\n', " "),
            ]),
            _ => None,
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "## Failed workloads\n");
        table(
            &mut out,
            &["system", "workload", "size B", "error"],
            &errors,
        );
    }
    out
}

/// Whether each `X-lazy` system behaved differently from its `X-sync` twin.
fn lazy_notes(out: &mut String, run: &Run<'_>) {
    let mut lines = Vec::new();
    for lazy in run.systems.iter().filter(|s| s.ends_with("-lazy")) {
        let twin = format!("{}-sync", lazy.trim_end_matches("-lazy"));
        let pairs: Vec<(u64, u64)> = run
            .of("sync")
            .iter()
            .filter(|m| &m.system == lazy)
            .filter_map(|m| run.find(&twin, &shape(m)).map(|t| (m.p50_us, t.p50_us)))
            .collect();
        if pairs.is_empty() {
            continue;
        }
        // Geometric mean of lazy ÷ sync p50 over the sizes: noise on a busy machine moves
        // single figures, so only a clear gap counts as an effect.
        let mean = (pairs
            .iter()
            .map(|(l, s)| (*l as f64 / (*s).max(1) as f64).ln())
            .sum::<f64>()
            / pairs.len() as f64)
            .exp();
        let verdict = if mean < 0.6 {
            "**applied**: acks no longer wait for fsync"
        } else if mean < 0.9 {
            "**inconclusive** (lazy is faster, but not clearly)"
        } else {
            "**no measurable effect**: acks still wait for fsync (policy not applied by this build?)"
        };
        let detail: Vec<String> = pairs
            .iter()
            .map(|(l, s)| format!("{} vs {} ms", ms(*l), ms(*s)))
            .collect();
        lines.push(format!(
            "- `{lazy}`: lazy sync policy {verdict}; sync-publish p50 lazy vs `{twin}`: {} (mean ratio {mean:.2}).",
            detail.join(", ")
        ));
    }
    if !lines.is_empty() {
        let _ = writeln!(out, "{}\n", lines.join("\n"));
    }
}

/// One goal line: the ratios it rests on and whether all of them meet it.
fn goal_line(out: &mut String, name: &str, ratios: &[(String, f64)], pass: impl Fn(f64) -> bool) {
    if ratios.is_empty() {
        let _ = writeln!(out, "| {name} | not measured | – |");
        return;
    }
    let met = ratios.iter().filter(|(_, r)| pass(*r)).count();
    let lo = ratios.iter().map(|(_, r)| *r).fold(f64::INFINITY, f64::min);
    let hi = ratios
        .iter()
        .map(|(_, r)| *r)
        .fold(f64::NEG_INFINITY, f64::max);
    let worst = ratios
        .iter()
        .find(|(_, r)| !pass(*r))
        .map(|(what, r)| format!("; e.g. {what}: {r:.2}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "| {name} | {lo:.2} – {hi:.2} | {} {met}/{}{worst} |",
        if met == ratios.len() { "✅" } else { "❌" },
        ratios.len()
    );
}

fn goals(out: &mut String, run: &Run<'_>, roles: &Roles) {
    let base = roles.baseline.as_str();
    let _ = writeln!(
        out,
        "## Issue 6 goals\n\nEach goal is checked on every size and shape measured; \"met\" counts them.\n"
    );
    let _ = writeln!(out, "| goal | ratio range | met |\n|---|---|---|");
    let single_node = |s: &str| s.starts_with("drawbridge") && s != roles.cluster;
    let vs_base =
        |workload: &str, pick: &dyn Fn(&str) -> bool, val: &dyn Fn(&Measurement) -> f64| {
            run.of(workload)
                .iter()
                .filter(|m| pick(&m.system))
                .filter_map(|m| {
                    let b = run.find(base, &shape(m))?;
                    let what = format!("{} {} B {}×{}", m.system, m.size, m.publishers, m.window);
                    ratio(val(m), Some(val(b))).map(|r| (what, r))
                })
                .collect::<Vec<_>>()
        };
    let thr = |m: &Measurement| m.msgs_per_sec;
    goal_line(
        out,
        "pipelined ≥ 2× JetStream, lazy sync",
        &vs_base(
            "pipelined",
            &|s| single_node(s) && s.ends_with("-lazy"),
            &thr,
        ),
        |r| r >= 2.0,
    );
    goal_line(
        out,
        "pipelined ≥ 1× JetStream, sync before ack",
        &vs_base(
            "pipelined",
            &|s| single_node(s) && s.ends_with("-sync"),
            &thr,
        ),
        |r| r >= 1.0,
    );
    goal_line(
        out,
        "consume from earliest ≥ 2× JetStream",
        &vs_base("consume", &|s| s.starts_with("drawbridge"), &thr),
        |r| r >= 2.0,
    );
    goal_line(
        out,
        "sync publish p50 ≤ JetStream's (ratio ≤ 1)",
        &vs_base("sync", &|s| single_node(s), &|m| m.p50_us as f64),
        |r| r <= 1.0,
    );
    goal_line(
        out,
        "sync publish p99 ≤ JetStream's (ratio ≤ 1)",
        &vs_base("sync", &|s| single_node(s), &|m| m.p99_us as f64),
        |r| r <= 1.0,
    );
    let cluster: Vec<(String, f64)> = run
        .of("pipelined")
        .iter()
        .filter(|m| m.system == roles.cluster)
        .filter_map(|m| {
            let single = run.find(&roles.single, &shape(m))?;
            let what = format!("{} B {}×{}", m.size, m.publishers, m.window);
            ratio(m.msgs_per_sec, Some(single.msgs_per_sec)).map(|r| (what, r))
        })
        .collect();
    goal_line(
        out,
        &format!(
            "3-node ALL-ack cluster ≥ 0.5× single node (`{}`), pipelined",
            roles.single
        ),
        &cluster,
        |r| r >= 0.5,
    );
    out.push('\n');
}

/// A metric drawn in a chart panel: a label suffix for its groups and how to read it.
type Metric = (&'static str, fn(&Measurement) -> f64);

/// The chart: pipelined throughput, consume throughput, latencies.
pub fn chart(records: &[Record], title: &str) -> String {
    let run = Run::new(records);
    let systems = run.systems.clone();
    let mut panels = Vec::new();
    let mut build = |title: &str, workload: &str, log: bool, metrics: &[Metric]| {
        let mut groups: BTreeMap<(usize, usize, usize, usize), String> = BTreeMap::new();
        for m in run.of(workload) {
            for (i, (label, _)) in metrics.iter().enumerate() {
                let g = if m.window > 1 {
                    format!("{} B {}×{}{label}", m.size, m.publishers, m.window)
                } else {
                    format!("{} B{label}", m.size)
                };
                groups.insert((i, m.size, m.publishers, m.window), g);
            }
        }
        let keys: Vec<_> = groups.keys().cloned().collect();
        let series = systems
            .iter()
            .map(|s| {
                let vals = keys
                    .iter()
                    .map(|(i, size, p, w)| {
                        run.find(s, &(workload.to_owned(), *size, *p, *w))
                            .map(|m| metrics[*i].1(m))
                    })
                    .collect();
                (s.clone(), vals)
            })
            .filter(|(_, v): &(String, Vec<Option<f64>>)| v.iter().any(Option::is_some))
            .collect();
        panels.push(svg::Panel {
            title: title.to_owned(),
            groups: groups.into_values().collect(),
            series,
            log,
        });
    };
    build(
        "Pipelined publish, msgs/s (higher is better)",
        "pipelined",
        false,
        &[("", |m| m.msgs_per_sec)],
    );
    build(
        "Consume from earliest, msgs/s (higher is better)",
        "consume",
        false,
        &[("", |m| m.msgs_per_sec)],
    );
    build(
        "Synchronous publish latency, ms (log scale, lower is better)",
        "sync",
        true,
        &[
            (" p50", |m| m.p50_us as f64 / 1000.0),
            (" p99", |m| m.p99_us as f64 / 1000.0),
        ],
    );
    build(
        "Publish-to-subscriber latency, ms (log scale, lower is better)",
        "e2e",
        true,
        &[
            (" p50", |m| m.p50_us as f64 / 1000.0),
            (" p99", |m| m.p99_us as f64 / 1000.0),
        ],
    );
    svg::render(title, &panels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::new_histogram;

    fn m(system: &str, workload: &str, p: usize, w: usize, rate: f64, p50: u64) -> Record {
        let mut h = new_histogram();
        h.saturating_record(p50);
        let mut m = Measurement::new(system, workload, 256, rate as u64, 1.0, &h);
        m.publishers = p;
        m.window = w;
        Record::Result(m)
    }

    #[test]
    fn ratios_goals_and_lazy_detection() {
        let records = vec![
            Record::Note {
                text: "quick mode".into(),
            },
            m("drawbridge-a-sync", "pipelined", 4, 256, 300.0, 1000),
            m("drawbridge-a-lazy", "pipelined", 4, 256, 500.0, 500),
            m("jetstream", "pipelined", 4, 256, 200.0, 800),
            m("drawbridge-a-sync", "sync", 1, 1, 100.0, 2000),
            m("drawbridge-a-lazy", "sync", 1, 1, 100.0, 1990),
            m("jetstream", "sync", 1, 1, 100.0, 1000),
            m("drawbridge-c3-sync", "pipelined", 4, 256, 100.0, 3000),
        ];
        let roles = Roles {
            baseline: "jetstream".into(),
            cluster: "drawbridge-c3-sync".into(),
            single: "drawbridge-a-sync".into(),
        };
        let md = markdown(&records, &roles, "t");
        assert!(md.contains("- quick mode"));
        assert!(
            md.contains("| `drawbridge-a-sync` | 256 | 4×256 | 300 | 0.1 |"),
            "{md}"
        );
        assert!(md.contains("| 1.50 |"), "{md}");
        assert!(md.contains("**no measurable effect**"), "{md}");
        assert!(
            md.contains("| pipelined ≥ 2× JetStream, lazy sync | 2.50 – 2.50 | ✅ 1/1 |"),
            "{md}"
        );
        assert!(
            md.contains("sync publish p50 ≤ JetStream's (ratio ≤ 1) | 1.99 – 2.00 | ❌ 0/2"),
            "{md}"
        );
        assert!(
            md.contains("single node (`drawbridge-a-sync`), pipelined | 0.33 – 0.33 | ❌"),
            "{md}"
        );
        let svg = chart(&records, "t");
        assert!(svg.contains("256 B 4×256"));
    }
}
