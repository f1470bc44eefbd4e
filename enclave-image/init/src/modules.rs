//! The image's module list: which kernel modules to load, in which order, and whether the
//! boot may go on without one. The image build writes it (dependencies first); a module
//! the production image cannot work without (the TDX guest driver) is `required`, so the
//! boot stops instead of running a node that cannot attest.

/// One line of the list.
#[derive(Debug, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub required: bool,
}

/// Parses `<path> required|optional` lines; blank lines and `#` comments are skipped.
pub fn parse_list(text: &str) -> Result<Vec<Module>, String> {
    let mut modules = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(path), Some(kind), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "line {}: expected `<path> required|optional`, got {line:?}",
                number + 1
            ));
        };
        let required = match kind {
            "required" => true,
            "optional" => false,
            other => {
                return Err(format!(
                    "line {}: expected required or optional, got {other:?}",
                    number + 1
                ))
            }
        };
        if !path.starts_with('/') {
            return Err(format!(
                "line {}: the path {path:?} is not absolute",
                number + 1
            ));
        }
        modules.push(Module {
            path: path.to_string(),
            required,
        });
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_modules_in_order_with_their_kind() {
        let list = "# built by make image\n/lib/modules/configfs.ko required\n\n/lib/modules/tdx-guest.ko optional\n";
        assert_eq!(
            parse_list(list).expect("list"),
            vec![
                Module {
                    path: "/lib/modules/configfs.ko".into(),
                    required: true
                },
                Module {
                    path: "/lib/modules/tdx-guest.ko".into(),
                    required: false
                },
            ]
        );
    }

    #[test]
    fn refuses_lines_it_cannot_read_naming_the_line() {
        for (list, expected) in [
            ("/a.ko\n", "line 1: expected `<path> required|optional`"),
            (
                "/a.ko required\n/b.ko maybe\n",
                "line 2: expected required or optional",
            ),
            (
                "a.ko required\n",
                "line 1: the path \"a.ko\" is not absolute",
            ),
            ("/a.ko required extra\n", "line 1: expected"),
        ] {
            let error = parse_list(list).expect_err(list);
            assert!(error.starts_with(expected), "{list:?}: {error}");
        }
    }
}
