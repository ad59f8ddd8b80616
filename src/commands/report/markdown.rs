//! The report as Markdown, for a change ticket: the run, the counts, and the rows that did not end well.
//!
//! Markdown renderers pass HTML through, so every text from the results file or the journal goes through
//! [`escape`]: markup characters become entities, Markdown's own punctuation is backslash-escaped, and a
//! line break cannot end a table row.

use std::io::Write;

use super::{Report, TABLE, put};
use crate::error::Result;

/// Escapes text for a Markdown paragraph or table cell.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // Quotes open markup only inside a tag, and `<` never reaches the page: in text they stay as they
        // are (an error message's "can't" reads as written in a ticket's plain text too).
        if let Some(entity) = super::html::entity(c).filter(|_| !matches!(c, '\'' | '"')) {
            out.push_str(entity);
            continue;
        }
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' | '\t' => out.push(' '),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Writes the Markdown report.
pub fn write(report: &Report, out: &mut impl Write) -> Result<()> {
    let run_id = report.identity.run_id.as_deref().unwrap_or("run");
    put(out, &format!("# Offboarding report: {}\n\n## The run\n\n", escape(run_id)))?;
    for (label, value) in report.run_lines() {
        put(out, &format!("- **{label}**: {}\n", escape(&value)))?;
    }
    put(out, "\n## Counts\n\n| Outcome | Rows |\n|---|---:|\n")?;
    for (outcome, n, _) in report.outcome_counts() {
        put(out, &format!("| {} | {n} |\n", escape(&outcome)))?;
    }
    put(out, &format!("| **All rows** | {} |\n| **Did not end well** | {} |\n", report.rows, report.not_well))?;
    if !report.by_status.is_empty() {
        put(out, "\n| Action status | Rows |\n|---|---:|\n")?;
        for (status, n) in &report.by_status {
            put(out, &format!("| {} | {n} |\n", escape(status)))?;
        }
    }
    if report.has_tenants() {
        put(out, "\n| Tenant | Rows | Did not end well |\n|---|---:|---:|\n")?;
        for t in &report.by_tenant {
            put(out, &format!("| {} | {} | {} |\n", escape(&t.tenant), t.rows, t.not_well))?;
        }
    }
    put(out, "\n## Rows that did not end well\n\n")?;
    if report.not_well == 0 {
        return put(out, "None.\n");
    }
    let tenants = report.has_tenants();
    let mut heading: Vec<&str> = TABLE.iter().map(|(_, h)| *h).collect();
    if tenants {
        heading.insert(0, "Tenant");
    }
    put(out, &format!("| {} |\n|{}\n", heading.join(" | "), "---|".repeat(heading.len())))?;
    report.not_well_rows(|row| {
        let tenant = tenants.then(|| escape(&row.tenant));
        let cells: Vec<String> = tenant.into_iter().chain(row.cells.iter().map(|c| escape(c))).collect();
        put(out, &format!("| {} |\n", cells.join(" | ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_table_breakers_are_escaped() {
        assert_eq!(escape("<b>x|y</b>\n[a](b)"), "&lt;b&gt;x\\|y&lt;/b&gt; \\[a\\](b)");
        assert_eq!(escape("it's \"<i>\""), "it's \"&lt;i&gt;\"");
    }
}
