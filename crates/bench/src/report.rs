//! The printed results: one row per measure with its goal, and medians with their spread.

use std::fmt::Write as _;

/// A verdict on a goal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The measure meets its goal.
    Met,
    /// The measure misses its goal.
    Missed,
    /// The row has no goal (context, a baseline, the noise floor).
    Info,
}

impl Verdict {
    /// `Met` if `ok`, else `Missed`.
    pub(crate) fn of(ok: bool) -> Self {
        if ok { Self::Met } else { Self::Missed }
    }
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    scenario: String,
    measure: String,
    result: String,
    goal: String,
    verdict: Verdict,
}

/// Every row so far, plus the notes printed under the table.
#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
    details: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    /// Adds a row.
    pub(crate) fn row(
        &mut self,
        scenario: impl Into<String>,
        measure: impl Into<String>,
        result: impl Into<String>,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        let row = Row {
            scenario: scenario.into(),
            measure: measure.into(),
            result: result.into(),
            goal: goal.into(),
            verdict,
        };
        eprintln!(
            "  {} | {} | {} | {} | {:?}",
            row.scenario, row.measure, row.result, row.goal, row.verdict
        );
        self.rows.push(row);
    }

    /// Adds a line to the second table, of absolute medians per contender: `scenario`,
    /// `contender`, then RPS, p50, p99 (µs), client CPU per RPC (µs) and failed RPCs.
    pub(crate) fn detail(
        &mut self,
        scenario: &str,
        contender: &str,
        [rps, p50, p99, cpu]: [f64; 4],
        errors: u64,
    ) {
        self.details.push(format!(
            "| {scenario} | {contender} | {rps:.0} | {} | {} | {cpu:.1} µs | {errors} |",
            micros(p50),
            micros(p99)
        ));
    }

    /// Adds a note printed under the table.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as markdown, then the notes.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| scenario | measure | result | goal | |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for r in &self.rows {
            let verdict = match r.verdict {
                Verdict::Met => "met",
                Verdict::Missed => "**missed**",
                Verdict::Info => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.scenario, r.measure, r.result, r.goal, verdict
            );
        }
        if !self.details.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| scenario | contender | RPS | p50 | p99 | client CPU per RPC | failed RPCs |"
            );
            let _ = writeln!(out, "|---|---|---|---|---|---|---|");
            for d in &self.details {
                let _ = writeln!(out, "{d}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// The median of some values and their range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub(crate) median: f64,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
}

impl Spread {
    /// The spread of `values`; all NaN when there are none.
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `1.02× (0.97–1.05)`.
    pub(crate) fn ratio(&self) -> String {
        format!("{:.2}× ({:.2}–{:.2})", self.median, self.min, self.max)
    }

    /// A duration in microseconds, shown in µs or ms: `1.2 ms (1.1–1.4)`.
    pub(crate) fn micros(&self) -> String {
        if self.max >= 10_000.0 {
            format!(
                "{:.1} ms ({:.1}–{:.1})",
                self.median / 1e3,
                self.min / 1e3,
                self.max / 1e3
            )
        } else {
            format!("{:.0} µs ({:.0}–{:.0})", self.median, self.min, self.max)
        }
    }
}

/// Microseconds as `850 µs` or `12.3 ms`.
pub(crate) fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// A quantile of `values` (nearest rank), NaN when there are none.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
