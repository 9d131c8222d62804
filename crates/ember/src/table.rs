//! Tables for people: left-aligned columns two spaces apart, a header row first.

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub fn print<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.as_ref().chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(AsRef::as_ref).collect());
    }
}
