//! Files a run writes with `--out DIR`: the per-task CSV (Batsim-style columns), the JSON
//! summary, per-window CSVs and SVG plots.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use handyman_core::Millis;
use plotters::prelude::*;

use crate::metrics::{self, Summary, SLOWDOWN_TAU_MS};
use crate::sim::RunOutput;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt(ms: Millis) -> String {
    if ms == Millis::MAX {
        String::new()
    } else {
        ms.to_string()
    }
}

/// The per-task CSV: id, group, kind, priority, submit, start, finish, wait, turnaround,
/// slowdown, attempts, final state (times in ms; empty when it never happened).
pub fn tasks_csv(out: &RunOutput) -> String {
    let mut s = String::with_capacity(out.tasks.len() * 80);
    s.push_str("id,group,kind,priority,submit,start,finish,wait,turnaround,slowdown,attempts,final_state\n");
    for (i, t) in out.tasks.iter().enumerate() {
        let group = &out.groups[t.group as usize].name;
        let kind = out
            .kind_names
            .get(t.kind as usize)
            .map(String::as_str)
            .unwrap_or("?");
        let wait = metrics::wait_of(t)
            .map(|w| w.to_string())
            .unwrap_or_default();
        let (turnaround, slowdown) = if t.finish != Millis::MAX && t.start != Millis::MAX {
            let ta = t.finish.saturating_sub(t.submit);
            let sd = (ta as f64 / t.ran_ms.max(SLOWDOWN_TAU_MS) as f64).max(1.0);
            (ta.to_string(), format!("{sd:.3}"))
        } else {
            (String::new(), String::new())
        };
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            i + 1,
            csv_field(group),
            csv_field(kind),
            t.priority,
            t.submit,
            opt(t.start),
            opt(t.finish),
            wait,
            turnaround,
            slowdown,
            t.attempts,
            t.state
        );
    }
    s
}

/// Writes everything a run produces into `dir`.
pub fn write_run(dir: &Path, out: &RunOutput, summary: &Summary) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("tasks.csv"), tasks_csv(out))?;
    let json = serde_json::to_string_pretty(summary).map_err(io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    let shares = metrics::shares(out);
    let mut s = String::from("window_start_ms,group,received_ms,entitled_ms\n");
    for (w, window) in shares.iter().enumerate() {
        for (g, got, entitled) in window {
            let name = &out.groups[*g as usize].name;
            let _ = writeln!(
                s,
                "{},{},{got:.0},{entitled:.0}",
                w as u64 * out.window_ms,
                csv_field(name)
            );
        }
    }
    std::fs::write(dir.join("shares.csv"), s)?;
    let mut q = String::from("time_ms,queued,running\n");
    for (t, queued, running) in &out.queue_samples {
        let _ = writeln!(q, "{t},{queued},{running}");
    }
    std::fs::write(dir.join("queue.csv"), q)?;

    let mut waits: Vec<u64> = out.tasks.iter().filter_map(metrics::wait_of).collect();
    waits.sort_unstable();
    let cdf = vec![(summary.policy.clone(), cdf_points(&waits))];
    line_chart(
        &dir.join("wait_cdf.svg"),
        "Wait-time CDF",
        "wait (s)",
        "fraction of tasks",
        &cdf,
    )?;
    let queue: Vec<(f64, f64)> = out
        .queue_samples
        .iter()
        .map(|(t, q, _)| (*t as f64 / 3.6e6, *q as f64))
        .collect();
    let running: Vec<(f64, f64)> = out
        .queue_samples
        .iter()
        .map(|(t, _, r)| (*t as f64 / 3.6e6, *r as f64))
        .collect();
    line_chart(
        &dir.join("queue_length.svg"),
        "Queue length",
        "time (h)",
        "tasks",
        &[("queued".into(), queue), ("running".into(), running)],
    )?;
    // Share of service of the busiest groups, per window.
    let mut totals: Vec<(f64, usize)> = out
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| (g.service.iter().sum::<f64>(), i))
        .collect();
    totals.sort_by(|a, b| b.0.total_cmp(&a.0));
    let windows = out
        .groups
        .iter()
        .map(|g| g.service.len())
        .max()
        .unwrap_or(0);
    let window_total: Vec<f64> = (0..windows)
        .map(|w| {
            out.groups
                .iter()
                .map(|g| g.service.get(w).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let series: Vec<(String, Vec<(f64, f64)>)> = totals
        .iter()
        .take(8)
        .map(|(_, g)| {
            let grp = &out.groups[*g];
            let pts = (0..windows)
                .map(|w| {
                    let total = window_total[w];
                    let got = grp.service.get(w).copied().unwrap_or(0.0);
                    (
                        (w as u64 * out.window_ms) as f64 / 3.6e6,
                        if total > 0.0 { got / total } else { 0.0 },
                    )
                })
                .collect();
            (grp.name.clone(), pts)
        })
        .collect();
    line_chart(
        &dir.join("group_share.svg"),
        "Share of service per group (8 busiest)",
        "time (h)",
        "share of run time",
        &series,
    )?;
    Ok(())
}

/// Points of an empirical CDF of sorted waits (ms), in seconds, at most ~200 points.
pub fn cdf_points(sorted: &[u64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let n = sorted.len();
    (0..=200)
        .map(|i| {
            let q = i as f64 / 200.0;
            let v = sorted[((n - 1) as f64 * q).round() as usize];
            (v as f64 / 1e3, q)
        })
        .collect()
}

/// A line chart with one line per series, written as SVG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> io::Result<()> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    y0 = y0.min(0.0);
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let err = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1 * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
