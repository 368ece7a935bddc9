//! The figures every load-generator report carries, for `loadgen summarize`.

use serde::{Deserialize, Serialize};

/// One named number of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// Short name with its unit, e.g. `p99_ms`.
    pub name: String,
    /// The value.
    pub value: f64,
}

/// The figures of a run, in the order they should be shown.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Figures(pub Vec<Figure>);

impl Figures {
    /// Appends a figure.
    pub fn push(&mut self, name: &str, value: f64) {
        self.0.push(Figure {
            name: name.to_owned(),
            value,
        });
    }
}

/// Rounds to `digits` decimals (for readable JSON).
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}
