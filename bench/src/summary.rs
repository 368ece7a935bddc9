//! `loadgen summarize DIR`: the results table of a `bench/run.sh` run.
//!
//! `run.sh` writes one report per run as `DIR/{scenario}__{impl}__{rep}.json`, with `impl`
//! either `project` or `baseline`. For every scenario and figure the table shows the median and
//! range over the repetitions for each implementation, and the ratio project / baseline of each
//! pair of runs (same scenario, same repetition), in repetition order.

use std::collections::BTreeMap;
use std::path::Path;

use crate::report::Figures;

/// Runs of one scenario: implementation → repetition → figures.
type Runs = BTreeMap<String, BTreeMap<u32, Figures>>;

fn load(dir: &Path) -> Result<BTreeMap<String, Runs>, String> {
    let mut scenarios: BTreeMap<String, Runs> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let parts: Vec<&str> = stem.split("__").collect();
        let [scenario, implementation, rep] = parts[..] else {
            continue;
        };
        let Ok(rep) = rep.parse::<u32>() else {
            continue;
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let figures: Figures = serde_json::from_value(value["figures"].clone())
            .map_err(|e| format!("{}: figures: {e}", path.display()))?;
        scenarios
            .entry(scenario.to_owned())
            .or_default()
            .entry(implementation.to_owned())
            .or_default()
            .insert(rep, figures);
    }
    Ok(scenarios)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A number with as many decimals as its size deserves.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn values_of(runs: Option<&BTreeMap<u32, Figures>>, figure: &str) -> BTreeMap<u32, f64> {
    runs.map(|runs| {
        runs.iter()
            .filter_map(|(&rep, figures)| {
                figures
                    .0
                    .iter()
                    .find(|f| f.name == figure)
                    .map(|f| (rep, f.value))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Median and range of `values`, with `(n=…)` when fewer than `reps` runs have the figure (a
/// failed run's report is set aside by `run.sh`, and some figures only exist in some runs):
/// a median over fewer runs must not pass for one over all of them.
fn cell(values: &BTreeMap<u32, f64>, reps: usize) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let mut sorted: Vec<f64> = values.values().copied().collect();
    let mid = median(&mut sorted);
    let mut text = if sorted.len() == 1 {
        format_value(mid)
    } else {
        format!(
            "{} [{}–{}]",
            format_value(mid),
            format_value(sorted[0]),
            format_value(sorted[sorted.len() - 1])
        )
    };
    if sorted.len() < reps {
        text += &format!(" (n={})", sorted.len());
    }
    text
}

/// The Markdown table for the reports in `dir`, scenarios in `order` first (then the rest
/// alphabetically).
///
/// # Errors
///
/// Unreadable files or reports without figures.
pub fn table(dir: &Path, order: &[String]) -> Result<String, String> {
    let scenarios = load(dir)?;
    let mut names: Vec<&String> = order
        .iter()
        .filter(|n| scenarios.contains_key(*n))
        .collect();
    names.extend(scenarios.keys().filter(|n| !order.contains(n)));
    let mut out = String::from(
        "| scenario | figure | project: median [range] | baseline: median [range] | \
         project/baseline per pair |\n| --- | --- | --- | --- | --- |\n",
    );
    for name in names {
        let runs = &scenarios[name];
        // Repetitions of this scenario that left a report, for either side.
        let reps = runs
            .values()
            .flat_map(BTreeMap::keys)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let mut figure_names: Vec<String> = Vec::new();
        for figures in runs.values().flat_map(BTreeMap::values) {
            for figure in &figures.0 {
                if !figure_names.contains(&figure.name) {
                    figure_names.push(figure.name.clone());
                }
            }
        }
        for figure in figure_names {
            let project = values_of(runs.get("project"), &figure);
            let baseline = values_of(runs.get("baseline"), &figure);
            let ratios: Vec<String> = project
                .iter()
                .filter_map(|(rep, &p)| baseline.get(rep).map(|&b| (p, b)))
                .map(|(p, b)| {
                    if b == 0.0 {
                        if p == 0.0 { "=".into() } else { "n/a".into() }
                    } else {
                        format!("{:.2}", p / b)
                    }
                })
                .collect();
            out += &format!(
                "| {name} | {figure} | {} | {} | {} |\n",
                cell(&project, reps),
                cell(&baseline, reps),
                if ratios.is_empty() {
                    "–".into()
                } else {
                    ratios.join(", ")
                }
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn values_keep_a_sensible_number_of_decimals() {
        assert_eq!(format_value(123_456.7), "123457");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(1.234), "1.23");
        assert_eq!(format_value(0.1234), "0.123");
        assert_eq!(format_value(0.0), "0");
    }

    /// The table for reports with one figure `x` each: `(file name, value)`, written to a
    /// directory of their own (`name`) and removed again.
    fn table_of(name: &str, reports: &[(&str, f64)]) -> String {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, value) in reports {
            let json = format!(r#"{{"figures":[{{"name":"x","value":{value}}}]}}"#);
            std::fs::write(dir.join(file), json).unwrap();
        }
        let table = table(&dir, &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        table
    }

    #[test]
    fn the_table_pairs_runs_by_repetition() {
        let table = table_of(
            "summary-test",
            &[
                ("s__project__1.json", 2.0),
                ("s__baseline__1.json", 4.0),
                ("s__project__2.json", 3.0),
                ("s__baseline__2.json", 3.0),
            ],
        );
        assert!(table.contains("| s | x | 2.50 [2–3] | 3.50 [3–4] | 0.50, 1.00 |"));
    }

    #[test]
    fn a_figure_from_fewer_runs_says_how_many() {
        // The project's second run failed (its report set aside).
        let table = table_of(
            "summary-n-test",
            &[
                ("s__project__1.json", 2.0),
                ("s__baseline__1.json", 4.0),
                ("s__baseline__2.json", 3.0),
            ],
        );
        assert!(
            table.contains("| s | x | 2 (n=1) | 3.50 [3–4] | 0.50 |"),
            "{table}"
        );
    }
}
