//! Languages: their names and aliases, the kernelspec each runs on, and the code that sets or
//! removes environment variables in each kernel's language (escaped so that no key or value can
//! inject code).

use std::collections::BTreeMap;
use std::fmt;

/// Most variables one call may set.
pub const MAX_ENV_VARS: usize = 256;
/// What a variable name is, and its longest (the same rule as template builds').
pub use ember_envd_proto::{is_env_name, MAX_ENV_NAME as MAX_ENV_KEY};
/// Most bytes of names and values together in one call.
pub const MAX_ENV_BYTES: usize = 1 << 20;

/// Why a set of environment variables is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// a name that is not `[A-Za-z_][A-Za-z0-9_]*` (or too long)
    #[error("invalid environment variable name {0:?}")]
    BadKey(String),
    /// a value with a NUL byte, which no environment can hold
    #[error("the value of environment variable {0} contains a NUL byte")]
    NulInValue(String),
    /// more than MAX_ENV_VARS or MAX_ENV_BYTES
    #[error("too many environment variables (at most {MAX_ENV_VARS}, {MAX_ENV_BYTES} bytes)")]
    TooMany,
    /// a kernel whose language has no way to set them
    #[error("environment variables are not supported in {0} contexts")]
    Unsupported(Language),
}

/// A language a context runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Python,
    JavaScript,
    TypeScript,
    Bash,
    R,
    Java,
}

impl Language {
    pub const ALL: [Language; 6] =
        [Language::Python, Language::JavaScript, Language::TypeScript, Language::Bash, Language::R, Language::Java];

    /// Parses a request's language as E2B does (case and surrounding spaces ignored, `js` and
    /// `ts` as aliases). `None` for an unknown language.
    pub fn parse(s: &str) -> Option<Language> {
        match s.trim().to_ascii_lowercase().as_str() {
            "python" => Some(Language::Python),
            "javascript" | "js" => Some(Language::JavaScript),
            "typescript" | "ts" => Some(Language::TypeScript),
            "bash" => Some(Language::Bash),
            "r" => Some(Language::R),
            "java" => Some(Language::Java),
            _ => None,
        }
    }

    /// The name contexts report.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Bash => "bash",
            Language::R => "r",
            Language::Java => "java",
        }
    }

    /// A cell that exercises the kernel's execution path (result included) without changing
    /// anything a user sees, for [`crate::context::Context::exercise`]; none where a run costs
    /// more than it saves.
    pub fn warm_up_code(self) -> Option<&'static str> {
        match self {
            Language::Python | Language::JavaScript | Language::TypeScript => Some("1 + 1"),
            Language::Bash | Language::R | Language::Java => None,
        }
    }

    /// The kernelspec (directory name) that runs it. Deno's kernel serves JS and TS.
    pub fn kernelspec(self) -> &'static str {
        match self {
            Language::Python => "python3",
            Language::JavaScript | Language::TypeScript => "deno",
            Language::Bash => "bash",
            Language::R => "ir",
            Language::Java => "java",
        }
    }

    /// Code that sets (`Some`) or removes (`None`) each variable, run as a silent execution.
    /// Variables must have been checked by [`check_env`].
    pub fn env_code(self, vars: &BTreeMap<String, Option<String>>) -> Result<String, EnvError> {
        let mut code = String::new();
        match self {
            Language::Python => {
                code.push_str("import os as __ember_os\n");
                for (k, v) in vars {
                    match v {
                        Some(v) => code.push_str(&format!("__ember_os.environ[{}] = {}\n", json_str(k), json_str(v))),
                        None => code.push_str(&format!("__ember_os.environ.pop({}, None)\n", json_str(k))),
                    }
                }
                code.push_str("del __ember_os\n");
            }
            Language::JavaScript | Language::TypeScript => {
                for (k, v) in vars {
                    match v {
                        Some(v) => code.push_str(&format!("Deno.env.set({}, {});\n", json_str(k), json_str(v))),
                        None => code.push_str(&format!("Deno.env.delete({});\n", json_str(k))),
                    }
                }
            }
            Language::Bash => {
                for (k, v) in vars {
                    match v {
                        Some(v) => code.push_str(&format!("export {k}={}\n", sh_str(v))),
                        None => code.push_str(&format!("unset {k}\n")),
                    }
                }
            }
            Language::R => {
                for (k, v) in vars {
                    match v {
                        Some(v) => code.push_str(&format!("Sys.setenv({} = {})\n", r_str(k), r_str(v))),
                        None => code.push_str(&format!("Sys.unsetenv({})\n", r_str(k))),
                    }
                }
                code.push_str("invisible(NULL)\n");
            }
            Language::Java => return Err(EnvError::Unsupported(self)),
        }
        Ok(code)
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks names, values and sizes of variables from a request.
pub fn check_env(vars: &BTreeMap<String, String>) -> Result<(), EnvError> {
    if vars.len() > MAX_ENV_VARS || vars.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_ENV_BYTES {
        return Err(EnvError::TooMany);
    }
    for (k, v) in vars {
        if !is_env_name(k) {
            return Err(EnvError::BadKey(k.chars().take(MAX_ENV_KEY).collect()));
        }
        if v.contains('\0') {
            return Err(EnvError::NulInValue(k.clone()));
        }
    }
    Ok(())
}

/// A JSON string literal: also a valid string literal in Python and JavaScript (control
/// characters, quotes and backslashes escaped; U+2028/2029 are legal in both since ES2019).
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A single-quoted shell word: nothing is special inside but `'`, written `'\''`.
fn sh_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// An R double-quoted string: backslash, quote and control characters escaped.
fn r_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            '\r' => out.push_str(r"\r"),
            '\t' => out.push_str(r"\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect()
    }

    #[test]
    fn languages_and_aliases() {
        assert_eq!(Language::parse("Python"), Some(Language::Python));
        assert_eq!(Language::parse(" js "), Some(Language::JavaScript));
        assert_eq!(Language::parse("TS"), Some(Language::TypeScript));
        assert_eq!(Language::parse("cobol"), None);
        assert_eq!(Language::parse(""), None);
        for l in Language::ALL {
            assert_eq!(Language::parse(l.name()), Some(l));
        }
        assert_eq!(Language::TypeScript.kernelspec(), "deno");
        assert_eq!(Language::R.kernelspec(), "ir");
    }

    #[test]
    fn env_names_checked() {
        for good in ["A", "_", "a_1", "PATH"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "A;B", "A\nB", "é", "A'"] {
            assert!(!is_env_name(bad), "{bad}");
        }
        assert!(!is_env_name(&"A".repeat(MAX_ENV_KEY + 1)));
        let mut vars = BTreeMap::new();
        vars.insert("OK".to_string(), "v".to_string());
        assert_eq!(check_env(&vars), Ok(()));
        vars.insert("X\"); import os; (\"".to_string(), "v".to_string());
        assert!(matches!(check_env(&vars), Err(EnvError::BadKey(_))));
        let nul: BTreeMap<_, _> = [("A".to_string(), "a\0b".to_string())].into();
        assert_eq!(check_env(&nul), Err(EnvError::NulInValue("A".into())));
        let many: BTreeMap<_, _> = (0..=MAX_ENV_VARS).map(|i| (format!("V{i}"), String::new())).collect();
        assert_eq!(check_env(&many), Err(EnvError::TooMany));
    }

    #[test]
    fn python_code() {
        let code = Language::Python.env_code(&set(&[("A", Some("x\"\n\\'y")), ("B", None)])).unwrap();
        assert_eq!(
            code,
            "import os as __ember_os\n__ember_os.environ[\"A\"] = \"x\\\"\\n\\\\'y\"\n\
             __ember_os.environ.pop(\"B\", None)\ndel __ember_os\n"
        );
    }

    #[test]
    fn javascript_code() {
        let code = Language::TypeScript.env_code(&set(&[("A", Some("a\u{2028}\"`${x}`")), ("B", None)])).unwrap();
        assert_eq!(code, "Deno.env.set(\"A\", \"a\u{2028}\\\"`${x}`\");\nDeno.env.delete(\"B\");\n");
    }

    #[test]
    fn bash_code() {
        let code = Language::Bash.env_code(&set(&[("A", Some("it's $(rm -rf /) `x`\n")), ("B", None)])).unwrap();
        assert_eq!(code, "export A='it'\\''s $(rm -rf /) `x`\n'\nunset B\n");
    }

    #[test]
    fn r_code() {
        let code = Language::R.env_code(&set(&[("A", Some("q\"\\\n\u{1}")), ("B", None)])).unwrap();
        assert_eq!(code, "Sys.setenv(\"A\" = \"q\\\"\\\\\\n\\u{1}\")\nSys.unsetenv(\"B\")\ninvisible(NULL)\n");
    }

    #[test]
    fn java_has_none() {
        assert_eq!(Language::Java.env_code(&set(&[("A", None)])), Err(EnvError::Unsupported(Language::Java)));
    }
}
