//! One way to show an error in a source file, shared by the `.pg` parser and
//! the Cedar policy loader: `file:line:col: message`, the line, and a caret
//! under the column, as cedar-policy and rustc draw them.

/// The 1-based line and column (in characters) of a byte offset in `src`.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `file:line:col: message`, then the source line and a caret under `col`.
pub fn render(file: &str, src: &str, line: usize, col: usize, message: &str) -> String {
    let text = src.lines().nth(line.saturating_sub(1)).unwrap_or("");
    let pad = " ".repeat(col.saturating_sub(1));
    format!("{file}:{line}:{col}: {message}\n  {text}\n  {pad}^")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = "ab\ncdé\nf";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        assert_eq!(line_col(src, 7), (2, 4), "columns count characters");
        assert_eq!(line_col(src, 6), (2, 3), "an offset inside a character is not a panic");
        assert_eq!(line_col(src, 999), (3, 2));
    }

    #[test]
    fn the_caret_sits_under_the_column() {
        assert_eq!(render("f.pg", "node P {\n  a: Strin }", 2, 6, "unknown type"), "f.pg:2:6: unknown type\n    a: Strin }\n       ^");
    }
}
