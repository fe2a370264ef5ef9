//! Output helpers shared by commands: tables, ages, times, reading a key without echo.

use chrono::{DateTime, Utc};
use comfy_table::{presets, ContentArrangement, Table};
use std::io::{BufRead, IsTerminal, Write};

/// A plain aligned table (no borders), like `kubectl get`.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled).set_header(header.to_vec());
    t
}

/// Prints a table without trailing spaces on each line.
pub fn print_table(t: &Table) {
    for line in t.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// `3d 4h`, `5h 12m`, `12m 5s`, `40s`: two units are enough to read at a glance.
pub fn age(secs: i64) -> String {
    if secs < 0 {
        return "in the future".into();
    }
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (suffix, size) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{suffix}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

pub fn age_since(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| age((crate::clock::now() - t).num_seconds())).unwrap_or_else(|| "-".into())
}

pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string()).unwrap_or_else(|| "-".into())
}

/// Reads a key from stdin. On a terminal: asks for it and turns echo off, so it never shows
/// on screen or in a terminal recording.
pub fn read_key_from_stdin(prompt: &str) -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdin.lock(), &mut text)?;
        return Ok(text);
    }
    eprint!("{prompt}: ");
    std::io::stderr().flush()?;
    let _echo = EchoOff::new();
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    eprintln!();
    Ok(line)
}

/// Turns terminal echo off until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed, then filled, termios struct.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff(None);
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = self.0 {
            // SAFETY: restoring the attributes read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &saved);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(40), "40s");
        assert_eq!(age(725), "12m 5s");
        assert_eq!(age(3 * 86_400 + 4 * 3_600 + 59), "3d 4h");
        assert_eq!(age(7200), "2h");
    }
}
