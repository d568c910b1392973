//! One progress-bar style for every long step (indicatif draws only on a terminal, so logs
//! and CI output stay clean).

use indicatif::{ProgressBar, ProgressStyle};

use crate::{Error, Result};

/// A bar over `total` units named `unit` ("steps", "requests", "questions").
pub fn bar(total: u64, unit: &str) -> Result<ProgressBar> {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit}  {{msg}}  [{{elapsed_precise}}<{{eta_precise}}]"
        ))
        .map_err(|e| Error::InvalidInput(e.to_string()))?,
    );
    Ok(bar)
}
