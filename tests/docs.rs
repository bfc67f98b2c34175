//! The README's tables against the code: the API's error codes, the CLI's exit codes and
//! the server's settings, so a change to one without the other fails here.

use std::collections::BTreeSet;
use std::process::Command;

use m3u_proxy::error::ERROR_CODES;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The body rows of the README table whose header row is `header`, as trimmed cells with
/// their backticks removed (a last cell holding `|` may be split: only the first ones are
/// read).
fn table(readme: &str, header: &str) -> Vec<Vec<String>> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "README has a table {header}");
    lines
        .skip(1) // the | --- | row
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

#[test]
fn the_error_table_lists_exactly_the_codes_the_api_sends() {
    let documented: BTreeSet<(u16, String)> = table(&readme(), "| status | code | when |")
        .into_iter()
        .map(|row| (row[0].parse().expect("a status"), row[1].clone()))
        .collect();
    let sent: BTreeSet<(u16, String)> = ERROR_CODES
        .iter()
        .map(|&(status, code)| (status, code.to_owned()))
        .collect();
    assert_eq!(documented, sent);
}

/// Every code literal handed to an error constructor in `src/` is in [`ERROR_CODES`] (and
/// so, by the test above, in the README). Each error answer is also checked against the list
/// at run time in debug builds, which every test of an error exercises.
#[test]
fn every_code_in_the_source_is_listed() {
    let listed: BTreeSet<&str> = ERROR_CODES.iter().map(|&(_, code)| code).collect();
    let mut found = 0;
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        for call in [
            "ApiError::new(",
            "ApiError::bad_request(",
            "ApiError::unprocessable(",
            "ApiError::not_found(",
            "ApiError::redirect(",
            "problem(",
        ] {
            for (at, _) in text.match_indices(call) {
                let rest = &text[at + call.len()..];
                let Some(open) = rest.find('"').filter(|&i| i < 120) else {
                    continue;
                };
                let literal = &rest[open + 1..];
                let code = &literal[..literal.find('"').unwrap()];
                if code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && code.contains('_') {
                    assert!(
                        listed.contains(code),
                        "{code} in {} is not listed",
                        path.display()
                    );
                    found += 1;
                }
            }
        }
    }
    assert!(found >= 12, "codes found in the source: {found}");
}

#[test]
fn the_exit_code_table_matches_the_cli() {
    let documented: BTreeSet<u8> = table(&readme(), "| exit code | meaning |")
        .into_iter()
        .map(|row| row[0].parse().expect("an exit code"))
        .collect();
    let used: BTreeSet<u8> = m3u_proxy::cli::exit::ALL.into_iter().collect();
    assert_eq!(documented, used);
}

/// One option of `m3u-proxy --help`: its flag, environment variable and default.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Setting {
    flag: String,
    env: String,
    default: String,
}

/// The text between `open` and the next `]` in `block`, if `open` is there.
fn bracketed(block: &str, open: &str) -> Option<String> {
    let start = block.find(open)? + open.len();
    let end = start + block[start..].find(']')?;
    Some(
        block[start..end]
            .replace(' ', "")
            .trim_end_matches('=')
            .to_owned(),
    )
}

#[test]
fn the_settings_table_matches_the_server_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_m3u-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    // Each option's block starts at a line whose first word is its flag.
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        let word = line.trim_start();
        if word.starts_with("--") || word.starts_with("-h, --") || word.starts_with("-V, --") {
            blocks.push(String::new());
        }
        // Help text wraps anywhere, even inside `[env: ...]`: one space per run of blanks.
        if let Some(block) = blocks.last_mut() {
            block.push(' ');
            block.push_str(word);
        }
    }
    let from_code: BTreeSet<Setting> = blocks
        .iter()
        .filter_map(|block| {
            let word = block.trim_start();
            let word = word
                .strip_prefix("-h, ")
                .or(word.strip_prefix("-V, "))
                .unwrap_or(word);
            let flag = word.split([' ', '\n', '=']).next().unwrap().to_owned();
            (flag != "--help" && flag != "--version").then(|| Setting {
                flag,
                env: bracketed(block, "[env: ").unwrap_or_default(),
                default: bracketed(block, "[default: ").unwrap_or_default(),
            })
        })
        .collect();
    let documented: BTreeSet<Setting> =
        table(&readme(), "| flag | environment | default | meaning |")
            .into_iter()
            .map(|row| Setting {
                flag: row[0].clone(),
                // `M3U_PROXY_PORT`, else `PORT`: the flag's variable, then its alias.
                env: row[1].split(", else").next().unwrap_or_default().to_owned(),
                default: match row[2].as_str() {
                    "none" | "off" => String::new(),
                    value => value.to_owned(),
                },
            })
            .collect();
    assert!(from_code.len() > 20, "{help}");
    assert_eq!(documented, from_code);
}
