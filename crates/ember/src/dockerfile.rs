//! A Dockerfile turned into the steps of an E2B template build, on the client side as E2B's
//! SDKs do it: FROM becomes the base image, RUN, COPY/ADD, ENV/ARG, WORKDIR and USER become
//! steps, CMD/ENTRYPOINT the start command. Like E2B, the build runs as root in `/` until the
//! Dockerfile says otherwise and ends as `user` in `/home/user` unless it set a user or workdir.
//! Metadata-only instructions (EXPOSE, LABEL, ...) are skipped with a warning.
//!
//! Not supported, with an error: multi-stage builds (several FROMs, `COPY --from`), heredocs,
//! ADD from a URL. `$VAR` and `${VAR}` (with `:-` and `:+`) are substituted from the ARG and
//! ENV values set earlier in the Dockerfile in FROM, COPY/ADD, ENV, ARG, WORKDIR and USER;
//! other references are kept as written. RUN and CMD are left to the shell.

use std::collections::HashMap;

use anyhow::{bail, Context};

/// The largest Dockerfile read.
pub const MAX_BYTES: usize = 1 << 20;
/// The most steps a Dockerfile may make.
pub const MAX_STEPS: usize = 256;

/// One step of the build, as sent to the API (`args` as E2B defines them for `kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: &'static str,
    pub args: Vec<String>,
}

/// What a Dockerfile builds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The FROM image.
    pub from_image: String,
    pub steps: Vec<Step>,
    /// The command CMD/ENTRYPOINT start, if any.
    pub start_cmd: Option<String>,
    /// What was skipped, for the user to see.
    pub warnings: Vec<String>,
}

/// A CMD or ENTRYPOINT: exec form (JSON) or shell form.
#[derive(Clone)]
struct StartCommand {
    exec: bool,
    words: Vec<String>,
}

struct Parser {
    vars: HashMap<String, String>,
    /// The ARGs declared before FROM: only FROM sees them, and an `ARG NAME` after it.
    before_from: HashMap<String, String>,
    out: Parsed,
    from_seen: bool,
    user_set: bool,
    workdir_set: bool,
    cmd: Option<StartCommand>,
    entrypoint: Option<StartCommand>,
}

/// Parses a Dockerfile's text.
pub fn parse(text: &str) -> anyhow::Result<Parsed> {
    if text.len() > MAX_BYTES {
        bail!("the Dockerfile has {} bytes; at most {MAX_BYTES}", text.len());
    }
    let mut p = Parser {
        vars: HashMap::new(),
        before_from: HashMap::new(),
        out: Parsed::default(),
        from_seen: false,
        user_set: false,
        workdir_set: false,
        cmd: None,
        entrypoint: None,
    };
    for (line_no, line) in logical_lines(text) {
        p.instruction(&line).with_context(|| format!("Dockerfile line {line_no}"))?;
        if p.out.steps.len() > MAX_STEPS {
            bail!("the Dockerfile makes more than {MAX_STEPS} steps");
        }
    }
    if !p.from_seen {
        bail!("the Dockerfile has no FROM instruction");
    }
    p.out.start_cmd = start_command(p.entrypoint.as_ref(), p.cmd.as_ref());
    if !p.user_set {
        p.step("USER", vec!["user".into()]);
    }
    if !p.workdir_set {
        p.step("WORKDIR", vec!["/home/user".into()]);
    }
    if p.out.steps.len() > MAX_STEPS {
        bail!("the Dockerfile makes more than {MAX_STEPS} steps");
    }
    Ok(p.out)
}

/// The instructions with their first line number: comments and blank lines dropped (inside
/// continuations too), lines ending in `\` joined with the next.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((i + 1, String::new()));
        match raw.trim_end().strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                current = Some((start, text));
            }
            None => {
                text.push_str(raw);
                lines.push((start, text));
            }
        }
    }
    lines.extend(current);
    lines
}

impl Parser {
    fn step(&mut self, kind: &'static str, args: Vec<String>) {
        self.out.steps.push(Step { kind, args });
    }

    fn warn(&mut self, message: String) {
        self.out.warnings.push(message);
    }

    fn instruction(&mut self, line: &str) -> anyhow::Result<()> {
        let line = line.trim();
        let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let rest = rest.trim();
        if !self.from_seen && keyword != "FROM" && keyword != "ARG" {
            bail!("{keyword} before FROM");
        }
        match keyword.as_str() {
            "FROM" => self.from(rest),
            "RUN" => self.run(rest),
            "COPY" | "ADD" => self.copy(&keyword, rest),
            "ENV" => self.env(rest),
            "ARG" => self.arg(rest),
            "WORKDIR" => {
                let path = self.single(&keyword, rest)?;
                self.step("WORKDIR", vec![path]);
                self.workdir_set = true;
                Ok(())
            }
            "USER" => {
                let user = self.single(&keyword, rest)?;
                self.step("USER", vec![user]);
                self.user_set = true;
                Ok(())
            }
            "CMD" | "ENTRYPOINT" => {
                let command = match json_array(rest) {
                    Some(words) => StartCommand { exec: true, words },
                    None if rest.is_empty() => StartCommand { exec: false, words: vec![] },
                    None => StartCommand { exec: false, words: vec![rest.to_string()] },
                };
                if keyword == "CMD" {
                    self.cmd = Some(command);
                } else {
                    self.entrypoint = Some(command);
                }
                Ok(())
            }
            "EXPOSE" | "LABEL" | "VOLUME" | "MAINTAINER" | "HEALTHCHECK" | "STOPSIGNAL" | "SHELL" | "ONBUILD" => {
                self.warn(format!("{keyword} has no equivalent in a template; skipped"));
                Ok(())
            }
            other => bail!("unknown instruction {other}"),
        }
    }

    fn from(&mut self, rest: &str) -> anyhow::Result<()> {
        if self.from_seen {
            bail!("multi-stage Dockerfiles (several FROMs) are not supported");
        }
        let (flags, rest) = split_flags(rest);
        for (name, _) in flags {
            match name.as_str() {
                "platform" => self.warn(format!("FROM --{name} is ignored")),
                _ => bail!("unknown FROM flag --{name}"),
            }
        }
        let words = self.words(rest, true)?;
        match words.as_slice() {
            [image] => self.out.from_image = image.clone(),
            [image, as_, _] if as_.eq_ignore_ascii_case("as") => self.out.from_image = image.clone(),
            _ => bail!("FROM takes an image (and optionally AS name)"),
        }
        if self.out.from_image.is_empty() {
            bail!("FROM names no image");
        }
        self.from_seen = true;
        self.before_from = std::mem::take(&mut self.vars);
        // Docker's defaults, until the Dockerfile changes them.
        self.step("USER", vec!["root".into()]);
        self.step("WORKDIR", vec!["/".into()]);
        Ok(())
    }

    fn run(&mut self, rest: &str) -> anyhow::Result<()> {
        let (flags, rest) = split_flags(rest);
        for (name, _) in flags {
            match name.as_str() {
                "mount" | "network" | "security" | "device" => self.warn(format!("RUN --{name} is ignored")),
                _ => bail!("unknown RUN flag --{name}"),
            }
        }
        let command = match json_array(rest) {
            Some(words) if words.is_empty() => bail!("RUN needs a command"),
            Some(words) => shell_join(&words),
            None => rest.to_string(),
        };
        if command.trim().is_empty() {
            bail!("RUN needs a command");
        }
        if has_heredoc(&command) {
            bail!("heredocs (<<EOF) are not supported");
        }
        self.step("RUN", vec![command]);
        Ok(())
    }

    fn copy(&mut self, keyword: &str, rest: &str) -> anyhow::Result<()> {
        let (flags, rest) = split_flags(rest);
        let (mut owner, mut mode) = (String::new(), String::new());
        for (name, value) in flags {
            match name.as_str() {
                "chown" => owner = self.expand(value.as_deref().context("--chown needs a value")?)?,
                "chmod" => {
                    mode = self.expand(value.as_deref().context("--chmod needs a value")?)?;
                    if !(3..=4).contains(&mode.len()) || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                        bail!("--chmod={mode}: expected an octal mode such as 0755");
                    }
                    mode = format!("{mode:0>4}");
                }
                "from" => bail!("{keyword} --from is not supported (multi-stage builds are not supported)"),
                "link" | "exclude" | "parents" | "keep-git-dir" | "checksum" | "unpack" => {
                    self.warn(format!("{keyword} --{name} is ignored"))
                }
                _ => bail!("unknown {keyword} flag --{name}"),
            }
        }
        if has_heredoc(rest) {
            bail!("heredocs (<<EOF) are not supported");
        }
        let words = match json_array(rest) {
            Some(words) => words.iter().map(|w| self.expand(w)).collect::<anyhow::Result<Vec<_>>>()?,
            None => self.words(rest, true)?,
        };
        let Some((dest, sources)) = words.split_last().filter(|(_, s)| !s.is_empty()) else {
            bail!("{keyword} needs at least one source and a destination");
        };
        for src in sources {
            if keyword == "ADD" && is_url(src) {
                bail!("ADD from a URL is not supported ({src}); download it with RUN curl or wget instead");
            }
            self.step("COPY", vec![src.clone(), dest.clone(), owner.clone(), mode.clone()]);
        }
        Ok(())
    }

    fn env(&mut self, rest: &str) -> anyhow::Result<()> {
        let mut pairs = Vec::new();
        let first = rest.split_whitespace().next().context("ENV needs a name and a value")?;
        if first.contains('=') {
            for word in self.words(rest, true)? {
                let (name, value) = word.split_once('=').with_context(|| format!("ENV {word}: expected NAME=VALUE"))?;
                pairs.push((name.to_string(), value.to_string()));
            }
        } else {
            let value = rest[first.len()..].trim();
            pairs.push((self.expand(first)?, self.expand(value)?));
        }
        let mut args = Vec::new();
        for (name, value) in pairs {
            check_name("ENV", &name)?;
            self.vars.insert(name.clone(), value.clone());
            args.extend([name, value]);
        }
        self.step("ENV", args);
        Ok(())
    }

    fn arg(&mut self, rest: &str) -> anyhow::Result<()> {
        let mut args = Vec::new();
        let words = self.words(rest, true)?;
        if words.is_empty() {
            bail!("ARG needs a name");
        }
        for word in words {
            let (name, value) = match word.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (word, None),
            };
            check_name("ARG", &name)?;
            // Without a default: the value given earlier (by an ENV, an ARG, an ARG before FROM).
            let value = value
                .or_else(|| self.vars.get(&name).or_else(|| self.before_from.get(&name)).cloned())
                .unwrap_or_default();
            self.vars.insert(name.clone(), value.clone());
            if self.from_seen {
                args.extend([name, value]);
            }
        }
        // Like E2B, the build's RUN steps see ARGs as env vars.
        if !args.is_empty() {
            self.step("ENV", args);
        }
        Ok(())
    }

    /// The one word of a WORKDIR or USER.
    fn single(&self, keyword: &str, rest: &str) -> anyhow::Result<String> {
        match self.words(rest, true)?.as_slice() {
            [word] if !word.is_empty() => Ok(word.clone()),
            _ => bail!("{keyword} takes exactly one argument"),
        }
    }

    fn expand(&self, text: &str) -> anyhow::Result<String> {
        Ok(self.words(text, false)?.into_iter().next().unwrap_or_default())
    }

    /// Splits `text` into words (unless `split`) with quotes, escapes and known `$VAR`s
    /// resolved.
    fn words(&self, text: &str, split: bool) -> anyhow::Result<Vec<String>> {
        let mut words = Vec::new();
        let mut word: Option<String> = None;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                c if c.is_whitespace() && split => words.extend(word.take()),
                '\\' => {
                    let next = chars.next().context("a \\ at the end")?;
                    word.get_or_insert_default().push(next);
                }
                '\'' => {
                    let w = word.get_or_insert_default();
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(c) => w.push(c),
                            None => bail!("unterminated ' quote in: {text}"),
                        }
                    }
                }
                '"' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(c @ ('"' | '\\' | '$')) => inner.push_str(&format!("\\{c}")),
                                Some(c) => inner.push_str(&format!("\\\\{c}")),
                                None => bail!("unterminated \" quote in: {text}"),
                            },
                            Some(c) => inner.push(c),
                            None => bail!("unterminated \" quote in: {text}"),
                        }
                    }
                    word.get_or_insert_default().push_str(&self.substitute(&inner)?);
                }
                '$' => {
                    let mut reference = String::from("$");
                    if chars.peek() == Some(&'{') {
                        for c in chars.by_ref() {
                            reference.push(c);
                            if c == '}' {
                                break;
                            }
                        }
                    } else {
                        while let Some(&c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                            reference.push(c);
                            chars.next();
                        }
                    }
                    word.get_or_insert_default().push_str(&self.substitute(&reference)?);
                }
                c => word.get_or_insert_default().push(c),
            }
        }
        words.extend(word);
        Ok(words)
    }

    /// `text` (escapes as `\c`) with the known variables substituted.
    fn substitute(&self, text: &str) -> anyhow::Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['$', '\\']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(escaped) = tail.strip_prefix('\\') {
                let c = escaped.chars().next().unwrap_or('\\');
                out.push(c);
                rest = &escaped[c.len_utf8().min(escaped.len())..];
                continue;
            }
            let (reference, len) = if let Some(braced) = tail.strip_prefix("${") {
                let end = braced.find('}').with_context(|| format!("missing }} in {tail}"))?;
                (&braced[..end], end + 3)
            } else {
                let name_len =
                    tail[1..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len() - 1);
                (&tail[1..1 + name_len], name_len + 1)
            };
            let (name, op, word) = match reference.find(":-").or_else(|| reference.find(":+")) {
                Some(j) => (&reference[..j], &reference[j..j + 2], &reference[j + 2..]),
                None => (reference, "", ""),
            };
            let value = self.vars.get(name);
            match (op, value) {
                (_, _) if name.is_empty() => out.push_str(&tail[..len]),
                (":-", Some(v)) if !v.is_empty() => out.push_str(v),
                (":-", _) => out.push_str(word),
                (":+", Some(v)) if !v.is_empty() => out.push_str(word),
                (":+", _) => {}
                (_, Some(v)) => out.push_str(v),
                // Not ours (the image's, say): left for whoever reads it.
                (_, None) => out.push_str(&tail[..len]),
            }
            rest = &tail[len..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Leading `--name[=value]` words, and what follows them.
fn split_flags(mut rest: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    while let Some(flag) = rest.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let (name, value) = match flag[..end].split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag[..end].to_string(), None),
        };
        flags.push((name, value));
        rest = flag[end..].trim_start();
    }
    (flags, rest)
}

/// The exec form: a JSON array of strings.
fn json_array(text: &str) -> Option<Vec<String>> {
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str(text).ok()
}

fn has_heredoc(text: &str) -> bool {
    text.match_indices("<<").any(|(i, _)| {
        let after = text[i + 2..].trim_start_matches('-');
        after.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '"' || c == '\'')
    })
}

fn is_url(src: &str) -> bool {
    src.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    }) || src.starts_with("git@")
}

fn check_name(keyword: &str, name: &str) -> anyhow::Result<()> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        bail!("{keyword}: '{name}' is not a valid variable name");
    }
    Ok(())
}

/// Docker's rules: an exec-form ENTRYPOINT gets CMD appended (a shell-form CMD as `/bin/sh -c
/// CMD`), a shell-form ENTRYPOINT ignores CMD, without ENTRYPOINT CMD is used as it is.
fn start_command(entrypoint: Option<&StartCommand>, cmd: Option<&StartCommand>) -> Option<String> {
    let command = match (entrypoint, cmd) {
        (Some(e), cmd) if e.exec => {
            let mut words = e.words.clone();
            match cmd {
                Some(c) if c.exec => words.extend(c.words.iter().cloned()),
                Some(c) => words.extend(["/bin/sh".into(), "-c".into()].into_iter().chain(c.words.iter().cloned())),
                None => {}
            }
            shell_join(&words)
        }
        (Some(e), _) => e.words.first().cloned().unwrap_or_default(),
        (None, Some(c)) if c.exec => shell_join(&c.words),
        (None, Some(c)) => c.words.first().cloned().unwrap_or_default(),
        (None, None) => return None,
    };
    Some(command).filter(|c| !c.trim().is_empty())
}

/// Words joined into one shell command, quoted where needed (Python's `shlex.quote`).
pub fn shell_join(words: &[String]) -> String {
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r#"'"'"'"#))
    }
}

#[cfg(test)]
mod tests;
