//! The report as one self-contained HTML page: no external script, style, font or image, so it works
//! offline and as an e-mail attachment, and prints readably (the filter box hides, rows do not split).
//!
//! Every text from the results file or the journal goes through [`escape`]. As a second line of defence the
//! page's Content-Security-Policy allows no source at all but its own style and the one inline script,
//! named by its SHA-256: markup that slipped through could not load or run anything.
//!
//! The script sorts the table (a click on a heading; by default the rows that did not end well first, then
//! by input line) and filters it (the box above it, or `?filter=TEXT` in the page's address; `?sort=COLUMN`
//! and `&desc` choose another order), and says how many rows it shows.

use std::io::Write;
use std::time::{Duration, SystemTime};

use base64::Engine;

use super::{OTHER_ROWS_MAX, QUOTA_PER_HOUR, QUOTA_PER_MINUTE, Report, TABLE, put};
use crate::error::Result;

/// The entity that stands for `c` in HTML text or a quoted attribute value, if `c` needs one (Markdown,
/// which passes HTML through, uses the same).
pub(super) fn entity(c: char) -> Option<&'static str> {
    Some(match c {
        '&' => "&amp;",
        '<' => "&lt;",
        '>' => "&gt;",
        '"' => "&quot;",
        '\'' => "&#39;",
        _ => return None,
    })
}

/// Escapes text for an HTML element's content or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match (entity(c), c) {
            (Some(entity), _) => out.push_str(entity),
            // Control characters have no place in a page (a NUL is a parse error).
            (None, c) if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            (None, c) => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
#rows th { cursor: pointer; user-select: none; }
#rows td { word-break: break-word; max-width: 40em; }
tr.bad td { background: #fdecea; }
.num { text-align: right; }
.note { color: #555; }
#filter { font: inherit; padding: 3px; width: 24em; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
@media print {
  body { margin: 0; font-size: 10px; }
  .noprint { display: none; }
  tr { break-inside: avoid; }
  #rows td { max-width: none; }
}
"#;

/// Sorts and filters the table; reads `?filter=`, `?sort=` and `&desc` from the address. Uses only
/// `textContent` (never markup) to read cells and write the count.
const SCRIPT: &str = r#"
(function () {
  var table = document.getElementById('rows');
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var all = Array.prototype.slice.call(body.rows);
  var box = document.getElementById('filter');
  var shown = document.getElementById('shown');
  var numeric = { line: true, http_status: true };
  function cell(row, i) { return row.cells[i].textContent; }
  function column(name) {
    for (var i = 0; i < heads.length; i++) { if (heads[i].getAttribute('data-col') === name) return i; }
    return -1;
  }
  var line = column('line');
  function byDefault(a, b) {
    var wa = a.getAttribute('data-well'), wb = b.getAttribute('data-well');
    if (wa !== wb) return wa < wb ? -1 : 1;
    return Number(cell(a, line)) - Number(cell(b, line));
  }
  function sortBy(i, desc) {
    var num = numeric[heads[i].getAttribute('data-col')];
    all.sort(function (a, b) {
      var x = cell(a, i), y = cell(b, i), c;
      if (num) { c = (Number(x) || 0) - (Number(y) || 0); } else { c = x < y ? -1 : (x > y ? 1 : 0); }
      if (c === 0) c = byDefault(a, b);
      return desc ? -c : c;
    });
    for (var h = 0; h < heads.length; h++) heads[h].removeAttribute('aria-sort');
    heads[i].setAttribute('aria-sort', desc ? 'descending' : 'ascending');
  }
  function apply() {
    var q = box.value.trim().toLowerCase(), n = 0;
    for (var r = 0; r < all.length; r++) {
      var row = all[r], hit = q === '' || row.textContent.toLowerCase().indexOf(q) >= 0;
      row.hidden = !hit;
      if (hit) n++;
      body.appendChild(row);
    }
    shown.textContent = n + ' of ' + all.length + ' rows shown';
  }
  var params = new URLSearchParams(window.location.search);
  var sorted = -1, desc = false;
  if (params.has('sort') && column(params.get('sort')) >= 0) {
    sorted = column(params.get('sort')); desc = params.has('desc'); sortBy(sorted, desc);
  } else {
    all.sort(byDefault);
  }
  box.value = params.get('filter') || '';
  for (var h = 0; h < heads.length; h++) {
    (function (i) {
      heads[i].addEventListener('click', function () {
        desc = sorted === i ? !desc : false; sorted = i; sortBy(i, desc); apply();
      });
    })(h);
  }
  box.addEventListener('input', apply);
  apply();
})();
"#;

/// Writes the page.
pub fn write(report: &Report, out: &mut impl Write) -> Result<()> {
    let script_hash = base64::engine::general_purpose::STANDARD
        .encode(ring::digest::digest(&ring::digest::SHA256, SCRIPT.as_bytes()).as_ref());
    let title = format!("Offboarding report: {}", report.identity.run_id.as_deref().unwrap_or("run"));
    put(
        out,
        &format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; \
             script-src 'sha256-{script_hash}'\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            escape(&title),
            escape(&title)
        ),
    )?;

    put(out, "<h2>The run</h2>\n<table id=\"run\">\n")?;
    for (label, value) in report.run_lines() {
        put(out, &format!("<tr><th>{}</th><td>{}</td></tr>\n", escape(label), escape(&value)))?;
    }
    put(out, "</table>\n")?;

    put(
        out,
        "<h2>Counts</h2>\n<table id=\"outcomes\">\n<thead><tr><th>Outcome</th><th>Rows</th></tr></thead>\n<tbody>\n",
    )?;
    for (outcome, n, ok) in report.outcome_counts() {
        let class = if ok { "" } else { " class=\"bad\"" };
        put(
            out,
            &format!(
                "<tr{class} data-outcome=\"{}\"><td>{}</td><td class=\"num\">{n}</td></tr>\n",
                escape(&outcome),
                escape(&outcome)
            ),
        )?;
    }
    put(
        out,
        &format!(
            "</tbody>\n<tfoot><tr><th>All rows</th><td class=\"num\" id=\"total\">{}</td></tr>\
             <tr><th>Did not end well</th><td class=\"num\" id=\"not-well\">{}</td></tr></tfoot>\n</table>\n",
            report.rows, report.not_well
        ),
    )?;
    if !report.by_status.is_empty() {
        put(
            out,
            "<p></p>\n<table id=\"statuses\">\n<thead><tr><th>Action status</th><th>Rows</th></tr></thead>\n<tbody>\n",
        )?;
        for (status, n) in &report.by_status {
            put(
                out,
                &format!(
                    "<tr data-status=\"{}\"><td>{}</td><td class=\"num\">{n}</td></tr>\n",
                    escape(status),
                    escape(status)
                ),
            )?;
        }
        put(
            out,
            "</tbody>\n</table>\n<p class=\"note\">Statuses as the results file holds them: as the run or the last \
             <code>mde-offboard track</code> read them.</p>\n",
        )?;
    }

    if report.has_tenants() {
        put(
            out,
            "<p></p>\n<table id=\"tenants\">\n<thead><tr><th>Tenant</th><th>Rows</th><th>Did not end well</th></tr></thead>\n<tbody>\n",
        )?;
        for t in &report.by_tenant {
            let class = if t.not_well == 0 { "" } else { " class=\"bad\"" };
            put(
                out,
                &format!(
                    "<tr{class}><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                    escape(&t.tenant),
                    t.rows,
                    t.not_well
                ),
            )?;
        }
        put(out, "</tbody>\n</table>\n")?;
    }

    chart(report, out)?;

    put(out, "<h2>Machines</h2>\n")?;
    let left_out_note = |left: u64| {
        if left == 0 {
            String::new()
        } else {
            format!(
                " The table holds every row that did not end well and the first {OTHER_ROWS_MAX} of the others: \
                 {left} row(s) that ended well are left out (the results file has them all)."
            )
        }
    };
    put(
        out,
        "<p class=\"noprint\"><label>Filter: <input id=\"filter\" type=\"search\" \
         placeholder=\"any text in a row\"></label> <span id=\"shown\"></span></p>\n\
         <p class=\"note\">Rows that did not end well come first (shaded); click a heading to sort.</p>\n\
         <table id=\"rows\">\n<thead><tr>",
    )?;
    let tenants = report.has_tenants();
    if tenants {
        put(out, "<th data-col=\"tenant_id\">Tenant</th>")?;
    }
    for (column, heading) in TABLE {
        put(out, &format!("<th data-col=\"{column}\">{}</th>", escape(heading)))?;
    }
    put(out, "</tr></thead>\n<tbody>\n")?;
    let left = report.table_rows(|row| {
        let class = if row.well { "" } else { " class=\"bad\"" };
        let mut line = format!("<tr{class} data-well=\"{}\">", u8::from(row.well));
        if tenants {
            line.push_str("<td>");
            line.push_str(&escape(&row.tenant));
            line.push_str("</td>");
        }
        for cell in &row.cells {
            line.push_str("<td>");
            line.push_str(&escape(cell));
            line.push_str("</td>");
        }
        line.push_str("</tr>\n");
        put(out, &line)
    })?;
    put(out, "</tbody>\n</table>\n")?;
    put(out, &format!("<p class=\"note\" id=\"left-out\">{}</p>\n", left_out_note(left).trim()))?;
    put(out, &format!("<script>{SCRIPT}</script>\n</body>\n</html>\n"))
}

/// The chart of offboard actions created over time against the documented quota, as inline SVG: bars per
/// minute for a run of up to four hours, per hour beyond (with the quota of that period as a line).
fn chart(report: &Report, out: &mut impl Write) -> Result<()> {
    put(out, "<h2>Calls over time</h2>\n")?;
    let per_minute = &report.created_per_minute;
    let (Some((&first, _)), Some((&last, _))) = (per_minute.first_key_value(), per_minute.last_key_value()) else {
        return put(
            out,
            "<p class=\"note\" id=\"chart-source\">No offboard action was created by this run (no <code>submitted</code> \
             row with a <code>submitted_at</code> time): nothing to draw.</p>\n",
        );
    };
    let by_hour = last - first >= 4 * 60;
    let (width_minutes, quota, unit) =
        if by_hour { (60, QUOTA_PER_HOUR, "hour") } else { (1, QUOTA_PER_MINUTE, "minute") };
    let start = first - first.rem_euclid(width_minutes);
    let buckets = ((last - start) / width_minutes + 1) as usize;
    let mut counts = vec![0u64; buckets];
    for (&minute, &n) in per_minute {
        counts[((minute - start) / width_minutes) as usize] += n;
    }
    let peak = counts.iter().copied().max().unwrap_or(0).max(quota);
    let (chart_w, chart_h, left, top) = (720.0_f64, 200.0_f64, 48.0_f64, 10.0_f64);
    let bar_w = chart_w / buckets as f64;
    let y = |n: u64| top + chart_h - chart_h * n as f64 / peak as f64;
    let mut svg = format!(
        "<svg id=\"chart\" role=\"img\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" \
         aria-label=\"Offboard actions created per {unit} against the quota of {quota} a {unit}\">\n",
        left + chart_w + 10.0,
        top + chart_h + 30.0,
        left + chart_w + 10.0,
        top + chart_h + 30.0
    );
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let x = left + i as f64 * bar_w;
        svg += &format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{n}</title></rect>\n",
            y(n),
            (bar_w - 1.0).max(0.5),
            top + chart_h - y(n),
            if n > quota { "#c0392b" } else { "#2e86c1" }
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{q:.1}\" y2=\"{q:.1}\" stroke=\"#c0392b\" stroke-dasharray=\"4 3\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">quota {quota}/{unit}</text>\n\
         <line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{}\" stroke=\"#333\"/>\n\
         <line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{peak}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n\
         <text x=\"{left}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n</svg>\n",
        left + chart_w,
        left + chart_w,
        y(quota) - 3.0,
        top + chart_h,
        left + chart_w,
        top + chart_h,
        top + chart_h,
        left - 4.0,
        top + 8.0,
        left - 4.0,
        top + chart_h,
        top + chart_h + 16.0,
        minute_text(start),
        left + chart_w,
        top + chart_h + 16.0,
        minute_text(start + buckets as i64 * width_minutes),
        q = y(quota),
    );
    put(out, &svg)?;
    let total: u64 = per_minute.values().sum();
    let not_charted = if report.not_charted > 0 {
        format!(" {} submitted row(s) have no readable creation time and are not drawn.", report.not_charted)
    } else {
        String::new()
    };
    put(
        out,
        &format!(
            "<p class=\"note\" id=\"chart-source\">Drawn from the results file: the {total} offboard action(s) this run \
             created (<code>submitted</code> rows), per {unit} of their <code>submitted_at</code> time (the service's \
             <code>creationDateTimeUtc</code>), against the documented quota of {quota} calls a {unit}. Calls that \
             created no action (failures, retries), the pre-flight's reads and tracking's reads are not recorded per \
             call in the results file and are not drawn{}.{not_charted}</p>\n",
            report.facts.calls.map(|c| format!("; the command made {c} API calls in all")).unwrap_or_default()
        ),
    )
}

fn minute_text(minute: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(minute.max(0)).unwrap_or(0) * 60);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    format!("{} UTC", text[..16].replace('T', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(escape("a\u{0}b\u{1b}[31m"), "a\u{fffd}b\u{fffd}[31m");
    }
}
