use super::*;

fn step(kind: &'static str, args: &[&str]) -> Step {
    Step { kind, args: args.iter().map(|a| a.to_string()).collect() }
}

/// The steps between the leading `USER root`, `WORKDIR /` and the trailing defaults.
fn body(parsed: &Parsed) -> &[Step] {
    let n = parsed.steps.len();
    let tail = parsed
        .steps
        .iter()
        .rev()
        .take_while(|s| *s == &step("USER", &["user"]) || *s == &step("WORKDIR", &["/home/user"]))
        .count();
    &parsed.steps[2..n - tail]
}

#[test]
fn every_instruction_becomes_its_step() {
    let parsed = parse(
        "# a comment\n\
         FROM e2bdev/base\n\
         \n\
         ENV A=1 B=\"two words\"\n\
         ENV C three words\n\
         WORKDIR /app\n\
         COPY --chown=user:user --chmod=755 a.txt b/ /srv/\n\
         ADD c.tar /opt/\n\
         RUN echo hi && ls\n\
         RUN [\"python3\", \"-c\", \"print('x y')\"]\n\
         USER root\n\
         EXPOSE 8000\n\
         LABEL a=b\n\
         CMD python3 -m http.server 8000\n",
    )
    .unwrap();
    assert_eq!(parsed.from_image, "e2bdev/base");
    assert_eq!(parsed.steps[..2], [step("USER", &["root"]), step("WORKDIR", &["/"])]);
    assert_eq!(
        parsed.steps[2..],
        [
            step("ENV", &["A", "1", "B", "two words"]),
            step("ENV", &["C", "three words"]),
            step("WORKDIR", &["/app"]),
            step("COPY", &["a.txt", "/srv/", "user:user", "0755"]),
            step("COPY", &["b/", "/srv/", "user:user", "0755"]),
            step("COPY", &["c.tar", "/opt/", "", ""]),
            step("RUN", &["echo hi && ls"]),
            step("RUN", &["python3 -c 'print('\"'\"'x y'\"'\"')'"]),
            step("USER", &["root"]),
        ]
    );
    assert_eq!(parsed.start_cmd.as_deref(), Some("python3 -m http.server 8000"));
    assert_eq!(parsed.warnings.len(), 2, "{:?}", parsed.warnings);
}

#[test]
fn the_defaults_end_the_build_unless_set() {
    let parsed = parse("FROM ubuntu:22.04\nRUN true\n").unwrap();
    assert_eq!(parsed.from_image, "ubuntu:22.04");
    assert_eq!(
        parsed.steps,
        [
            step("USER", &["root"]),
            step("WORKDIR", &["/"]),
            step("RUN", &["true"]),
            step("USER", &["user"]),
            step("WORKDIR", &["/home/user"]),
        ]
    );
    assert_eq!(parsed.start_cmd, None);
}

#[test]
fn continuations_join_lines_and_skip_comments_inside() {
    let parsed =
        parse("FROM e2bdev/base\nRUN apt-get update && \\\n    # a comment\n\n    apt-get install -y curl\nRUN a \\\n")
            .unwrap();
    assert_eq!(body(&parsed), [step("RUN", &["apt-get update &&     apt-get install -y curl"]), step("RUN", &["a"])]);
}

#[test]
fn lowercase_instructions_and_from_as() {
    let parsed = parse("from --platform=linux/amd64 python:3.12 AS app\nrun true\n").unwrap();
    assert_eq!(parsed.from_image, "python:3.12");
    assert_eq!(body(&parsed), [step("RUN", &["true"])]);
    assert_eq!(parsed.warnings.len(), 1);
}

#[test]
fn args_and_envs_are_substituted() {
    let parsed = parse(
        "ARG TAG=3.12\n\
         ARG BEFORE=x\n\
         FROM python:${TAG}\n\
         RUN echo $TAG\n\
         ENV T1=$TAG\n\
         ARG TAG\n\
         ENV T2=$TAG\n\
         ARG DIR=/srv\n\
         ARG EMPTY\n\
         ENV APP=$DIR/app PATH=/opt/bin:$PATH\n\
         WORKDIR ${APP}\n\
         COPY x ${APP}/x\n\
         USER ${WHO:-nobody}\n\
         ENV ALT=${DIR:+set} LIT='$DIR' Q=\"$DIR \\$DIR\"\n\
         RUN echo $DIR\n",
    )
    .unwrap();
    assert_eq!(parsed.from_image, "python:3.12");
    assert_eq!(
        body(&parsed),
        [
            step("RUN", &["echo $TAG"]),
            step("ENV", &["T1", "$TAG"]),
            step("ENV", &["TAG", "3.12"]),
            step("ENV", &["T2", "3.12"]),
            step("ENV", &["DIR", "/srv"]),
            step("ENV", &["EMPTY", ""]),
            step("ENV", &["APP", "/srv/app", "PATH", "/opt/bin:$PATH"]),
            step("WORKDIR", &["/srv/app"]),
            step("COPY", &["x", "/srv/app/x", "", ""]),
            step("USER", &["nobody"]),
            step("ENV", &["ALT", "set", "LIT", "$DIR", "Q", "/srv $DIR"]),
            step("RUN", &["echo $DIR"]),
        ]
    );
}

#[test]
fn copy_json_form_and_quotes() {
    let parsed = parse("FROM e2bdev/base\nCOPY [\"my file\", \"/dst dir/\"]\nCOPY 'a b' c\\ d /x/\n").unwrap();
    assert_eq!(
        body(&parsed),
        [
            step("COPY", &["my file", "/dst dir/", "", ""]),
            step("COPY", &["a b", "/x/", "", ""]),
            step("COPY", &["c d", "/x/", "", ""]),
        ]
    );
}

#[test]
fn start_command_follows_dockers_rules() {
    let start = |text: &str| parse(&format!("FROM e2bdev/base\n{text}")).unwrap().start_cmd;
    assert_eq!(start("CMD [\"python3\", \"-m\", \"http.server\"]").as_deref(), Some("python3 -m http.server"));
    assert_eq!(start("ENTRYPOINT [\"node\"]\nCMD [\"app.js\"]").as_deref(), Some("node app.js"));
    assert_eq!(start("ENTRYPOINT [\"tini\", \"--\"]\nCMD run it").as_deref(), Some("tini -- /bin/sh -c 'run it'"));
    assert_eq!(start("ENTRYPOINT serve --port 1\nCMD ignored").as_deref(), Some("serve --port 1"));
    assert_eq!(start("CMD first\nCMD second").as_deref(), Some("second"));
    assert_eq!(start("CMD []"), None);
}

#[test]
fn bad_input_is_an_error_with_its_line() {
    let cases = [
        ("RUN true\n", "before FROM"),
        ("# only a comment\n", "no FROM"),
        ("FROM a\nFROM b\n", "multi-stage"),
        ("FROM a\nCOPY --from=build /x /y\n", "--from"),
        ("FROM a\nADD https://example.com/x.tgz /x\n", "URL"),
        ("FROM a\nCOPY onlyone\n", "source and a destination"),
        ("FROM a\nCOPY --chmod=999 a b\n", "octal"),
        ("FROM a\nCOPY --frobnicate a b\n", "unknown COPY flag"),
        ("FROM a\nENV\n", "ENV needs"),
        ("FROM a\nENV 1A=x\n", "not a valid variable name"),
        ("FROM a\nENV A=\"open\n", "unterminated"),
        ("FROM a\nWORKDIR a b\n", "exactly one"),
        ("FROM a\nUSER\n", "exactly one"),
        ("FROM a\nRUN\n", "RUN needs"),
        ("FROM a\nRUN <<EOF\necho\nEOF\n", "heredoc"),
        ("FROM a\nFROBNICATE x\n", "unknown instruction"),
        ("FROM\n", "FROM takes"),
    ];
    for (text, expected) in cases {
        let error = format!("{:#}", parse(text).unwrap_err());
        assert!(error.contains(expected), "{text:?}: {error}");
    }
    let error = format!("{:#}", parse("FROM a\n\nRUN true\nFROBNICATE\n").unwrap_err());
    assert!(error.contains("line 4"), "{error}");
}

#[test]
fn size_and_step_bounds() {
    let big = format!("FROM a\nRUN {}\n", "x".repeat(MAX_BYTES));
    assert!(format!("{:#}", parse(&big).unwrap_err()).contains("at most"));
    let many = format!("FROM a\n{}", "RUN true\n".repeat(MAX_STEPS));
    assert!(format!("{:#}", parse(&many).unwrap_err()).contains("more than"));
    let fits = format!("FROM a\n{}", "RUN true\n".repeat(MAX_STEPS - 4));
    assert_eq!(parse(&fits).unwrap().steps.len(), MAX_STEPS);
}

#[test]
fn shell_quoting_matches_shlex() {
    let words = |w: &[&str]| shell_join(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(words(&["a", "b c", "", "it's", "x=1"]), "a 'b c' '' 'it'\"'\"'s' x=1");
}
