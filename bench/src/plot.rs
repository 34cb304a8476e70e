//! `sluice-bench plot A.json B.json ... -o latency.png`: the runs' latency by percentile
//! (a percentile spectrum: latency on a log scale against the "nines" of the percentile, so
//! 90%, 99%, 99.9%, 99.99% are equally spaced) and their throughput as bars, side by side.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (plotters' `ab_glyph` backend), so no
//! system font library is needed. The font's license is in `bench/assets/DejaVuSans.LICENSE`.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

/// The embedded font (DejaVu Sans 2.37, Bitstream Vera license; from Debian's fonts-dejavu-core).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Image size in pixels.
const WIDTH_PX: u32 = 1600;
/// See `WIDTH_PX`.
const HEIGHT_PX: u32 = 720;
/// Width of the spectrum chart; the bar chart takes the rest.
const SPECTRUM_WIDTH_PX: u32 = 1000;
/// Most runs in one plot (the palette and the legend stay readable).
const RUNS_MAX: usize = 24;

/// Arguments of `plot`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Args {
    /// Result files (`--json` output of produce, consume or e2e).
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(short, long, default_value = "latency.png")]
    pub(crate) output: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "sluice-bench")]
    pub(crate) title: String,
}

/// One run read from its JSON.
struct Run {
    label: String,
    mb_per_s: f64,
    /// (name, [percentile, µs] points).
    lines: Vec<(String, Vec<[f64; 2]>)>,
}

fn read_run(path: &Path) -> Result<Run, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("{}: not one JSON object: {e}", path.display()))?;
    let label = v
        .get("label")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            path.file_stem()
                .map_or(String::new(), |s| s.to_string_lossy().into())
        });
    let mb_per_s = v
        .get("mb_per_s")
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("{}: no mb_per_s", path.display()))?;
    let points = |key: &str| -> Vec<[f64; 2]> {
        v.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| Some([p.get(0)?.as_f64()?, p.get(1)?.as_f64()?]))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    for (key, suffix) in [("spectrum", "ack"), ("e2e_spectrum", "e2e")] {
        let p = points(key);
        if !p.is_empty() {
            lines.push((format!("{label} ({suffix})"), p));
        }
    }
    Ok(Run {
        label,
        mb_per_s,
        lines,
    })
}

/// "Nines" of a percentile: 90% → 1, 99% → 2, 99.9% → 3.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-9).log10()
}

fn nines_label(x: f64) -> String {
    let p = (1.0 - 10f64.powf(-x)) * 100.0;
    if x < 0.5 {
        "0%".into()
    } else {
        let digits = (x.round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}

/// Runs `plot` from the command line.
pub(crate) fn run(args: Args) -> Result<(), String> {
    let runs = args
        .inputs
        .iter()
        .map(|p| read_run(p))
        .collect::<Result<Vec<_>, _>>()?;
    draw(&runs, &args.output, &args.title)?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

/// Draws `runs` into the PNG `output`.
fn draw(runs: &[Run], output: &Path, title: &str) -> Result<(), String> {
    if runs.is_empty() || runs.len() > RUNS_MAX {
        return Err(format!("plot takes 1 to {RUNS_MAX} runs"));
    }
    // Registering twice (the suite plots after each round) is harmless.
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| "the embedded font is invalid".to_string())?;
    let e = |e: &dyn std::fmt::Display| format!("plot: {e}");
    let root = BitMapBackend::new(output, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 26)).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(SPECTRUM_WIDTH_PX);

    // Spectrum: x = nines of the percentile; the maximum is drawn a quarter-nine after the
    // last percentile.
    // (name, points, run index)
    type Line = (String, Vec<(f64, f64)>, usize);
    let mut lines: Vec<Line> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        for (name, points) in &run.lines {
            let mut xy: Vec<(f64, f64)> = Vec::new();
            for p in points {
                let x = if p[0] >= 100.0 {
                    xy.last().map_or(0.0, |l| l.0 + 0.25)
                } else {
                    nines(p[0])
                };
                xy.push((x, p[1].max(1.0)));
            }
            lines.push((name.clone(), xy, i));
        }
    }
    let x_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(3.0f64, f64::max)
        .ceil();
    let (y_min, y_max) = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold((f64::MAX, 1.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let y_min = if y_min == f64::MAX {
        1.0
    } else {
        (y_min / 2.0).max(1.0)
    };
    let y_max = (y_max * 2.0).max(y_min * 10.0);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|x| e(&x))?;
    for (n, (name, xy, i)) in lines.iter().enumerate() {
        let color = Palette99::pick(*i).to_rgba();
        // e2e lines (the second of a run) are thinner.
        let width = if n > 0 && lines[n - 1].2 == *i { 1 } else { 3 };
        chart
            .draw_series(LineSeries::new(
                xy.iter().copied(),
                color.stroke_width(width),
            ))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|x| e(&x))?;

    // Throughput bars, one per run, coloured as its line.
    // Headroom above the tallest bar for the run labels drawn at the top left (18 px each).
    let mb_max =
        runs.iter().map(|r| r.mb_per_s).fold(1.0f64, f64::max) * (1.25 + 0.05 * runs.len() as f64);
    let n = runs.len();
    let mut bars = ChartBuilder::on(&right)
        .caption("throughput (MB/s of values)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..mb_max)
        .map_err(|x| e(&x))?;
    bars.configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < n {
                format!("{}", i + 1)
            } else {
                String::new()
            }
        })
        .x_desc("run (legend order)")
        .y_desc("MB/s")
        .draw()
        .map_err(|x| e(&x))?;
    bars.draw_series(runs.iter().enumerate().map(|(i, r)| {
        Rectangle::new(
            [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, r.mb_per_s)],
            Palette99::pick(i).to_rgba().filled(),
        )
    }))
    .map_err(|x| e(&x))?;
    bars.draw_series(runs.iter().enumerate().map(|(i, r)| {
        Text::new(
            format!("{:.0}", r.mb_per_s),
            (i as f64 + 0.2, r.mb_per_s + mb_max * 0.01),
            ("sans-serif", 14),
        )
    }))
    .map_err(|x| e(&x))?;
    // Run numbers with labels, for the bars.
    for (i, r) in runs.iter().enumerate() {
        right
            .draw(&Text::new(
                format!("{}: {}", i + 1, r.label),
                (80, 60 + 18 * i as i32),
                ("sans-serif", 13)
                    .into_font()
                    .color(&Palette99::pick(i).to_rgba()),
            ))
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Draws the runs in `inputs` (JSON files) into `output` (for the suite).
pub(crate) fn plot_files(inputs: &[PathBuf], output: &Path, title: &str) -> Result<(), String> {
    let runs = inputs
        .iter()
        .map(|p| read_run(p))
        .collect::<Result<Vec<_>, _>>()?;
    draw(&runs, output, title)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(3.0), "99.9%");
    }
}
