//! What a build does, checked: its steps as E2B's build API gives them (`{type, args,
//! filesHash, force}`), and the defaults a template hands to its sandboxes.
//!
//! Only five step types exist on the wire: the SDKs compile every other builder call (apt, pip
//! and npm installs, git clone, ...) and every Dockerfile instruction into these on the client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most steps in one build.
pub const MAX_STEPS: usize = 256;
/// Longest argument of a step (a RUN command, a path), in bytes.
pub const MAX_ARG_BYTES: usize = 64 << 10;
/// Most env vars a template may set.
pub const MAX_ENV_VARS: usize = 256;
/// The guest's `PATH` when nothing sets one (the agent's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A step's arguments that do not make sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {index} ({kind}): {message}")]
pub struct SpecError {
    /// 1-based, as E2B numbers steps.
    pub index: usize,
    pub kind: String,
    pub message: String,
}

/// One build step, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// Files from the uploaded archive `files_hash`: `src` (a path or glob relative to the
    /// client's context directory) into `dest`, owned by `owner` (`user[:group]`; the current
    /// user if none), with `mode` if given.
    Copy {
        src: String,
        dest: String,
        owner: Option<String>,
        mode: Option<u32>,
        files_hash: String,
    },
    /// `cmd` with bash, as `user` (the current user if none), in the current workdir with the
    /// env vars so far.
    Run {
        cmd: String,
        user: Option<String>,
    },
    Env {
        vars: Vec<(String, String)>,
    },
    Workdir {
        path: String,
    },
    User {
        name: String,
    },
}

impl Step {
    /// Checks one wire step (`index` is 1-based, for messages).
    pub fn parse(index: usize, kind: &str, args: &[String], files_hash: Option<&str>) -> Result<Step, SpecError> {
        let fail = |message: String| SpecError { index, kind: kind.to_string(), message };
        if let Some(long) = args.iter().find(|a| a.len() > MAX_ARG_BYTES) {
            return Err(fail(format!("an argument of {} bytes; at most {MAX_ARG_BYTES}", long.len())));
        }
        if args.iter().any(|a| a.contains('\0')) {
            return Err(fail("an argument holds a NUL byte".into()));
        }
        let arg = |i: usize| args.get(i).map(String::as_str).filter(|a| !a.is_empty());
        let step = match kind {
            "COPY" => {
                let (Some(src), Some(dest)) = (arg(0), arg(1)) else {
                    return Err(fail("COPY needs a source and a destination".into()));
                };
                let hash = files_hash.ok_or_else(|| fail("COPY needs filesHash".into()))?;
                if !is_files_hash(hash) {
                    return Err(fail("filesHash must be 64 lowercase hex digits (SHA-256)".into()));
                }
                let owner = arg(2).map(|o| check_owner(o).map(|_| o.to_string())).transpose().map_err(fail)?;
                let mode = arg(3).map(parse_mode).transpose().map_err(fail)?;
                Step::Copy { src: src.into(), dest: dest.into(), owner, mode, files_hash: hash.into() }
            }
            "RUN" => {
                let cmd = arg(0).ok_or_else(|| fail("RUN needs a command".into()))?;
                let user = arg(1).map(|u| check_user(u).map(|_| u.to_string())).transpose().map_err(fail)?;
                Step::Run { cmd: cmd.into(), user }
            }
            "ENV" => {
                if args.is_empty() || !args.len().is_multiple_of(2) {
                    return Err(fail("ENV needs name and value pairs".into()));
                }
                if args.len() / 2 > MAX_ENV_VARS {
                    return Err(fail(format!("at most {MAX_ENV_VARS} env vars")));
                }
                let mut vars = Vec::new();
                for pair in args.chunks(2) {
                    if !is_env_name(&pair[0]) {
                        return Err(fail(format!("'{}' is not an env var name", pair[0])));
                    }
                    vars.push((pair[0].clone(), pair[1].clone()));
                }
                Step::Env { vars }
            }
            "WORKDIR" => Step::Workdir { path: arg(0).ok_or_else(|| fail("WORKDIR needs a path".into()))?.into() },
            "USER" => {
                let name = arg(0).ok_or_else(|| fail("USER needs a user name".into()))?;
                check_user(name).map_err(fail)?;
                Step::User { name: name.into() }
            }
            other => return Err(fail(format!("unknown step type '{other}' (COPY, RUN, ENV, WORKDIR or USER)"))),
        };
        Ok(step)
    }

    /// The step's wire name.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Copy { .. } => "COPY",
            Step::Run { .. } => "RUN",
            Step::Env { .. } => "ENV",
            Step::Workdir { .. } => "WORKDIR",
            Step::User { .. } => "USER",
        }
    }

    /// One line for the build log.
    /// Whether the step changes nothing in the VM, only the build's defaults (so it saves no
    /// layer of its own: the next layer saved carries its effect).
    pub fn is_stateless(&self) -> bool {
        matches!(self, Step::Env { .. } | Step::User { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            Step::Copy { src, dest, .. } => format!("COPY {src} {dest}"),
            Step::Run { cmd, user: Some(u) } => format!("RUN {cmd} (as {u})"),
            Step::Run { cmd, user: None } => format!("RUN {cmd}"),
            Step::Env { vars } => {
                let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
                format!("ENV {}", names.join(" "))
            }
            Step::Workdir { path } => format!("WORKDIR {path}"),
            Step::User { name } => format!("USER {name}"),
        }
    }
}

/// A step and whether it skips the cache (it and every step after it run again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    pub step: Step,
    pub force: bool,
}

/// What a template gives the sandboxes made from it, and what a build's steps run with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defaults {
    pub user: String,
    pub workdir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Defaults {
    /// Those of Ember's `base` (E2B's `e2bdev/base`): user `user` in `/home/user`.
    pub fn base() -> Self {
        Defaults { user: "user".into(), workdir: Some("/home/user".into()), env: BTreeMap::new() }
    }

    /// Applies an ENV, WORKDIR or USER step (the others change nothing here). ENV values may
    /// name earlier variables (`$NAME`, `${NAME}`), as in Docker: `PATH=/opt/bin:$PATH`.
    pub fn apply(&mut self, step: &Step) {
        match step {
            Step::Env { vars } => {
                for (k, v) in vars {
                    let value = self.expand(v);
                    self.env.insert(k.clone(), value);
                }
            }
            Step::Workdir { path } => self.workdir = Some(self.resolve(path)),
            Step::User { name } => self.user = name.clone(),
            Step::Copy { .. } | Step::Run { .. } => {}
        }
    }

    /// `value` with `$NAME` and `${NAME}` replaced by the env vars so far (`PATH` is the
    /// guest's default until set; unknown names are empty; `\$` is a literal `$`).
    pub fn expand(&self, value: &str) -> String {
        let lookup = |name: &str| match self.env.get(name) {
            Some(v) => v.clone(),
            None if name == "PATH" => DEFAULT_PATH.to_string(),
            None => String::new(),
        };
        let mut out = String::with_capacity(value.len());
        let mut chars = value.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'$') => {
                    out.push('$');
                    chars.next();
                }
                '$' if chars.peek() == Some(&'{') => {
                    chars.next();
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    out.push_str(&lookup(&name));
                }
                '$' if chars.peek().is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') => {
                    let mut name = String::new();
                    while let Some(c) = chars.peek().copied().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                        name.push(c);
                        chars.next();
                    }
                    out.push_str(&lookup(&name));
                }
                c => out.push(c),
            }
        }
        out
    }

    /// `path` made absolute against the current workdir (`/` if none).
    pub fn resolve(&self, path: &str) -> String {
        if path.starts_with('/') {
            return path.to_string();
        }
        let base = self.workdir.as_deref().unwrap_or("/");
        format!("{}/{path}", base.trim_end_matches('/'))
    }
}

/// SHA-256 in lowercase hex.
pub fn is_files_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A portable env var name (the rule the code interpreter uses too).
pub use ember_envd_proto::is_env_name;

/// A user or group name as useradd accepts it (or a numeric id).
fn check_user(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && (name.bytes().all(|b| b.is_ascii_digit())
            || (name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))));
    if ok {
        Ok(())
    } else {
        Err(format!("'{name}' is not a user name"))
    }
}

/// `user` or `user:group`.
fn check_owner(owner: &str) -> Result<(), String> {
    let (user, group) = owner.split_once(':').map_or((owner, None), |(u, g)| (u, Some(g)));
    check_user(user)?;
    group.map_or(Ok(()), check_user)
}

/// An octal mode such as `0755` or `644`.
fn parse_mode(mode: &str) -> Result<u32, String> {
    match u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("'{mode}' is not an octal file mode")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_five_step_types_parse() {
        assert_eq!(
            Step::parse(1, "RUN", &args(&["echo hi", "root"]), None).unwrap(),
            Step::Run { cmd: "echo hi".into(), user: Some("root".into()) }
        );
        assert_eq!(
            Step::parse(1, "RUN", &args(&["true"]), None).unwrap(),
            Step::Run { cmd: "true".into(), user: None }
        );
        assert_eq!(
            Step::parse(2, "COPY", &args(&["app", "/srv/", "user:user", "0755"]), Some(HASH)).unwrap(),
            Step::Copy {
                src: "app".into(),
                dest: "/srv/".into(),
                owner: Some("user:user".into()),
                mode: Some(0o755),
                files_hash: HASH.into()
            }
        );
        let copy = Step::parse(2, "COPY", &args(&["a", "/b", "", ""]), Some(HASH)).unwrap();
        assert!(matches!(copy, Step::Copy { owner: None, mode: None, .. }));
        assert_eq!(
            Step::parse(3, "ENV", &args(&["A", "1", "B_2", "x y"]), None).unwrap(),
            Step::Env { vars: vec![("A".into(), "1".into()), ("B_2".into(), "x y".into())] }
        );
        assert_eq!(Step::parse(4, "WORKDIR", &args(&["app"]), None).unwrap(), Step::Workdir { path: "app".into() });
        assert_eq!(Step::parse(5, "USER", &args(&["root"]), None).unwrap(), Step::User { name: "root".into() });
    }

    #[test]
    fn bad_steps_are_refused_with_their_number() {
        let bad = [
            ("RUN", args(&[]), None),
            ("COPY", args(&["a", "/b"]), None),
            ("COPY", args(&["a", "/b"]), Some("../../etc")),
            ("COPY", args(&["a", "/b", "", "999"]), Some(HASH)),
            ("COPY", args(&["a", "/b", "root;rm", ""]), Some(HASH)),
            ("ENV", args(&["A"]), None),
            ("ENV", args(&["1A", "x"]), None),
            ("USER", args(&["$(reboot)"]), None),
            ("WORKDIR", args(&[""]), None),
            ("FROM", args(&["x"]), None),
            ("RUN", vec!["x".repeat(MAX_ARG_BYTES + 1)], None),
            ("RUN", args(&["a\0b"]), None),
        ];
        for (kind, a, hash) in bad {
            let e = Step::parse(7, kind, &a, hash).unwrap_err();
            assert_eq!(e.index, 7, "{e}");
            assert!(e.to_string().starts_with(&format!("step 7 ({kind})")), "{e}");
        }
    }

    #[test]
    fn env_values_expand_earlier_variables() {
        let mut d = Defaults::base();
        let env = |vars: &[(&str, &str)]| Step::Env {
            vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        d.apply(&env(&[("PATH", "/opt/bin:$PATH"), ("HOME_APP", "/srv")]));
        assert_eq!(d.env["PATH"], format!("/opt/bin:{DEFAULT_PATH}"));
        d.apply(&env(&[("APP", "${HOME_APP}/app"), ("PRICE", "\\$5"), ("NONE", "[$UNSET]"), ("LONE", "$ 1")]));
        assert_eq!(d.env["APP"], "/srv/app");
        assert_eq!(d.env["PRICE"], "$5");
        assert_eq!(d.env["NONE"], "[]");
        assert_eq!(d.env["LONE"], "$ 1");
    }

    #[test]
    fn defaults_follow_env_workdir_and_user() {
        let mut d = Defaults::base();
        d.apply(&Step::Env { vars: vec![("A".into(), "1".into())] });
        d.apply(&Step::Workdir { path: "app".into() });
        assert_eq!(d.workdir.as_deref(), Some("/home/user/app"));
        d.apply(&Step::Workdir { path: "/srv".into() });
        d.apply(&Step::User { name: "root".into() });
        d.apply(&Step::Run { cmd: "x".into(), user: None });
        assert_eq!(
            d,
            Defaults { user: "root".into(), workdir: Some("/srv".into()), env: [("A".into(), "1".into())].into() }
        );
    }
}
