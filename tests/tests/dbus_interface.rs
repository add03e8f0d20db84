//! The rest of armourd's D-Bus interface (SPEC §7), on a private bus per
//! test: the properties, the standard interfaces (Introspectable,
//! Properties, Peer), the errors for malformed calls, and the policy file
//! shipped for the system bus.

use armourd_tests::{backend_tests, bus::Scene, Backend, Bus, LaunchExt, Sandbox, Value};

backend_tests!(
    properties_introspection_and_ping,
    unknown_methods_and_bad_arguments_are_errors,
    arguments_to_a_method_without_any_are_errors,
    shipped_policy_lets_anyone_call_and_only_root_own,
);

/// The unprivileged user of these tests (`nobody`).
const NOBODY: u32 = 65534;

/// `Backend` and `Version`, read-only; Introspect names the interface,
/// its methods, signals and properties and the standard interfaces; Ping.
fn properties_introspection_and_ping(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    sb.write_config("# nothing configured\n");
    let (mut daemon, _) = bus.daemon(&sb, backend);

    assert_eq!(bus.property("Backend"), Value::Str(backend.name().into()));
    assert_eq!(
        bus.property("Version"),
        Value::Str(env!("CARGO_PKG_VERSION").into()),
        "the workspace's version"
    );
    let all = bus
        .call(
            "org.freedesktop.DBus.Properties.GetAll",
            &["string:com.github.Armourd"],
        )
        .value();
    assert_eq!(all.keys(), ["Backend", "Version"]);
    let set = bus.call(
        "org.freedesktop.DBus.Properties.Set",
        &[
            "string:com.github.Armourd",
            "string:Backend",
            "variant:string:none",
        ],
    );
    // Any error: zbus answers UnknownProperty rather than PropertyReadOnly.
    set.error();
    assert_eq!(bus.property("Backend"), Value::Str(backend.name().into()));

    let xml = bus
        .call("org.freedesktop.DBus.Introspectable.Introspect", &[])
        .text()
        .to_owned();
    for part in [
        r#"<interface name="com.github.Armourd">"#,
        r#"<method name="ListProcesses">"#,
        r#"<arg type="a{sv}" direction="out"/>"#,
        r#"<method name="WatchProcess">"#,
        r#"<arg name="pid" type="i" direction="in"/>"#,
        r#"<method name="UnwatchProcess">"#,
        r#"<method name="Watch">"#,
        r#"<method name="Unwatch">"#,
        r#"<method name="GetProcesses">"#,
        r#"<arg type="aa{sv}" direction="out"/>"#,
        r#"<signal name="ProcessExited">"#,
        r#"<arg name="will_restart" type="b"/>"#,
        r#"<signal name="ProcessRestarted">"#,
        r#"<arg name="restarts" type="u"/>"#,
        r#"<property name="Backend" type="s" access="read">"#,
        r#"<property name="Version" type="s" access="read">"#,
        r#"<interface name="org.freedesktop.DBus.Introspectable">"#,
        r#"<interface name="org.freedesktop.DBus.Properties">"#,
        r#"<interface name="org.freedesktop.DBus.Peer">"#,
    ] {
        assert!(xml.contains(part), "Introspect lacks {part}:\n{xml}");
    }
    assert!(
        bus.call("org.freedesktop.DBus.Peer.Ping", &[])
            .values()
            .is_empty(),
        "Ping has an empty reply"
    );
    daemon.assert_running();
}

/// Errors come at once (not as a reply timeout), and the daemon answers
/// the next call.
fn unknown_methods_and_bad_arguments_are_errors(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    sb.write_config("# nothing configured\n");
    let (mut daemon, _) = bus.daemon(&sb, backend);

    let error = |method: &str, args: &[&str]| bus.call(method, args).error();
    let invalid = "org.freedesktop.DBus.Error.InvalidArgs";
    assert_eq!(
        error("com.github.Armourd.Restart", &[]),
        "org.freedesktop.DBus.Error.UnknownMethod"
    );
    assert_eq!(
        error("com.github.Armourd.WatchProcess", &["string:1"]),
        invalid
    );
    assert_eq!(error("com.github.Armourd.WatchProcess", &[]), invalid);
    assert_eq!(
        error("com.github.Armourd.UnwatchProcess", &["uint32:1"]),
        invalid
    );
    assert_eq!(
        error("com.github.Armourd.WatchProcess", &["int32:1", "int32:2"]),
        invalid
    );
    assert_eq!(
        error("com.github.Nothing.ListProcesses", &[]),
        "org.freedesktop.DBus.Error.UnknownInterface"
    );
    let elsewhere = bus.send(
        None,
        "com.github.Armourd",
        "/com/github/elsewhere",
        "com.github.Armourd.ListProcesses",
        &[],
    );
    assert_eq!(
        elsewhere.error(),
        "org.freedesktop.DBus.Error.UnknownObject"
    );

    assert_eq!(
        bus.call("com.github.Armourd.ListProcesses", &[]).value(),
        Value::Array(vec![])
    );
    daemon.assert_running();
}

/// A call with arguments to a method that takes none is as malformed as
/// a string for an int32.
fn arguments_to_a_method_without_any_are_errors(backend: Backend) {
    let sb = Sandbox::new();
    let bus = Bus::start(&sb);
    sb.write_config("# nothing configured\n");
    let (mut daemon, _) = bus.daemon(&sb, backend);
    let methods = ["ListProcesses", "GetProcesses"];
    let answers = methods.map(|method| {
        let reply = bus.call(&format!("com.github.Armourd.{method}"), &["int32:1"]);
        let answer = reply
            .error_name()
            .unwrap_or_else(|| format!("a reply: {}", reply.text().trim_end()));
        (method, answer)
    });
    let invalid = "org.freedesktop.DBus.Error.InvalidArgs".to_owned();
    assert_eq!(
        answers,
        methods.map(|m| (m, invalid.clone())),
        "METHOD(int32 1)"
    );
    daemon.assert_running();
}

/// On a bus with the system bus's default policy and the repository's
/// policy file: root owns the name; anyone may call the methods, Get and
/// Introspect and Ping; nobody else may own the name or Set a property.
fn shipped_policy_lets_anyone_call_and_only_root_own(backend: Backend) {
    let Scene {
        sb,
        bus,
        svc,
        report,
        mut daemon,
        ..
    } = Scene::start_with_system_policy(backend, false);
    let pid = sb.spawn(sb.command(&svc, &report).as_user(NOBODY, NOBODY, &[]));
    report.wait_starts(1);

    let nobody = Some(NOBODY);
    let call = |method: &str, args: &[&str]| {
        bus.send(
            nobody,
            "com.github.Armourd",
            "/com/github/armourd",
            method,
            args,
        )
    };
    assert_eq!(bus.pid_call(nobody, "WatchProcess", pid), 0);
    let list = call("com.github.Armourd.ListProcesses", &[]).value();
    assert_eq!(
        list.get(&svc.display().to_string()),
        Some(&Value::Int32(pid))
    );
    call("com.github.Armourd.GetProcesses", &[]).value();
    assert_eq!(
        call(
            "org.freedesktop.DBus.Properties.Get",
            &["string:com.github.Armourd", "string:Backend"]
        )
        .value()
        .unboxed(),
        &Value::Str(backend.name().into())
    );
    call(
        "org.freedesktop.DBus.Properties.GetAll",
        &["string:com.github.Armourd"],
    )
    .value();
    assert!(call("org.freedesktop.DBus.Introspectable.Introspect", &[])
        .text()
        .contains(r#"<interface name="com.github.Armourd">"#));
    call("org.freedesktop.DBus.Peer.Ping", &[]).values();
    assert_eq!(bus.pid_call(nobody, "UnwatchProcess", pid), 0);
    let pid_arg = format!("int32:{pid}");
    assert_eq!(call("com.github.Armourd.Watch", &[&pid_arg]).values(), []);
    assert_eq!(call("com.github.Armourd.Unwatch", &[&pid_arg]).values(), []);

    let denied = "org.freedesktop.DBus.Error.AccessDenied";
    let set = call(
        "org.freedesktop.DBus.Properties.Set",
        &[
            "string:com.github.Armourd",
            "string:Backend",
            "variant:string:none",
        ],
    );
    assert_eq!(set.error(), denied, "Set");
    let own = bus.send(
        nobody,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        &["string:com.github.Armourd", "uint32:0"],
    );
    assert_eq!(
        own.error(),
        denied,
        "a user other than root owning the name"
    );
    daemon.assert_running();
}
