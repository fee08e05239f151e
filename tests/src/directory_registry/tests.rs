//! What this backend does beyond the conformance suite: files it must
//! leave out, files of crashed processes, the owner rule, the cap.

use std::{
    fs,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use rpc_ext_registry::{Error, Instance, Registry, Resolver, ServiceWatch};

use super::{files, DirectoryRegistry};

const HEARTBEAT: Duration = Duration::from_millis(100);
const STALE_AFTER: Duration = Duration::from_millis(500);
/// Generous: these run beside whole-suite builds on 2 cores.
const DEADLINE: Duration = Duration::from_secs(10);

fn registry(root: &Path) -> DirectoryRegistry {
    DirectoryRegistry::builder(root)
        .heartbeat(HEARTBEAT)
        .stale_after(STALE_AFTER)
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn ports(watch: &ServiceWatch) -> Vec<u16> {
    watch
        .current()
        .instances
        .iter()
        .map(|i| i.address.port())
        .collect()
}

async fn until_ports(watch: &mut ServiceWatch, want: &[u16]) {
    let found = tokio::time::timeout(
        DEADLINE,
        watch.wait_for(|i| i.iter().map(|i| i.address.port()).eq(want.iter().copied())),
    )
    .await;
    assert!(
        matches!(found, Ok(Ok(_))),
        "wanted {want:?}, shows {:?}",
        watch.current()
    );
}

/// A record as another process would write it, with its heartbeat `age` ago.
fn write_foreign(root: &Path, port: u16, age: Duration) {
    let instance = Instance::new("echo", ([127, 0, 0, 1], port).into());
    let dir = root.join("echo");
    fs::create_dir_all(&dir).unwrap();
    let record = files::Record {
        heartbeat_unix_ms: files::unix_ms(std::time::SystemTime::now() - age),
        owner: rpc_ext_registry::kit::registration_id(),
        instance: instance.clone(),
    };
    files::write_record(&dir.join(files::file_name(instance.address)), &record).unwrap();
}

fn owner_at(path: &Path) -> Option<String> {
    files::read_record(path).unwrap().map(|r| r.unwrap().owner)
}

#[tokio::test]
async fn unusable_files_are_left_out_and_the_rest_shown() {
    let root = tempfile::tempdir().unwrap();
    let registry = registry(root.path());
    let _live = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 1).into()))
        .await
        .unwrap();
    let dir = root.path().join("echo");
    fs::write(dir.join("junk.json"), b"{\"instance\":").unwrap();
    fs::write(dir.join("huge.json"), vec![b' '; 20_000]).unwrap();
    fs::write(dir.join("notes.txt"), b"not an instance").unwrap();
    fs::create_dir(dir.join("a-directory.json")).unwrap();
    // Another service's record filed here, and an undialable address.
    let elsewhere = files::Record {
        instance: Instance::new("other", ([127, 0, 0, 1], 2).into()),
        owner: rpc_ext_registry::kit::registration_id(),
        heartbeat_unix_ms: files::unix_ms(std::time::SystemTime::now()),
    };
    files::write_record(&dir.join("127.0.0.1_2.json"), &elsewhere).unwrap();
    write_foreign(root.path(), 3, Duration::ZERO);

    let watch = registry.subscribe("echo").await.unwrap();
    assert_eq!(ports(&watch), [1, 3]);
    assert!(watch.current().last_error.is_none());
}

#[tokio::test]
async fn a_crashed_process_leaves_the_set_once_its_heartbeat_is_stale() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("echo/127.0.0.1_7.json");
    // The "process": a runtime of its own on a thread of its own, shut
    // down without deregistering, which ends its keeper as a crash would.
    let crashed = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let registry = registry(root.path());
                let registration = runtime
                    .block_on(registry.register(Instance::new("echo", ([127, 0, 0, 1], 7).into())))
                    .unwrap();
                drop(runtime);
                registration
            })
            .join()
            .unwrap()
    });
    let registry = registry(root.path());
    let _alive = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 8).into()))
        .await
        .unwrap();
    let mut watch = registry.subscribe("echo").await.unwrap();
    until_ports(&mut watch, &[8]).await;
    assert!(path.is_file(), "the crashed process's file is left, stale");
    drop(crashed);

    // A file from a long-dead process is never shown; a fresh one is.
    write_foreign(root.path(), 9, STALE_AFTER * 4);
    write_foreign(root.path(), 10, Duration::ZERO);
    until_ports(&mut watch, &[8, 10]).await;
}

#[tokio::test]
async fn only_the_owner_deletes_the_file_and_a_newer_registration_owns_it() {
    let root = tempfile::tempdir().unwrap();
    let registry = registry(root.path());
    let path = root.path().join("echo/127.0.0.1_5.json");
    let instance = Instance::new("echo", ([127, 0, 0, 1], 5).into());
    let older = registry
        .register(instance.clone().with_weight(1))
        .await
        .unwrap();
    let first_owner = owner_at(&path).unwrap();
    let newer = registry.register(instance.with_weight(2)).await.unwrap();
    let newer_owner = owner_at(&path).unwrap();
    assert_ne!(first_owner, newer_owner);

    // Several heartbeats: the older registration stands by.
    tokio::time::sleep(HEARTBEAT * 4).await;
    assert_eq!(owner_at(&path).as_ref(), Some(&newer_owner));
    older.deregister().await.unwrap();
    assert_eq!(owner_at(&path).as_ref(), Some(&newer_owner));
    let mut watch = registry.subscribe("echo").await.unwrap();
    assert_eq!(watch.current().instances[0].weight, 2);

    newer.deregister().await.unwrap();
    assert!(!path.exists());
    until_ports(&mut watch, &[]).await;
}

#[tokio::test]
async fn a_vanished_file_is_written_again_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let registry = registry(root.path());
    let _registration = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 4).into()))
        .await
        .unwrap();
    let path = root.path().join("echo/127.0.0.1_4.json");
    let owner = owner_at(&path).unwrap();
    fs::remove_dir_all(root.path().join("echo")).unwrap();

    let back = tokio::time::timeout(DEADLINE, async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "the keeper never wrote the file again");
    assert_eq!(
        owner_at(&path),
        Some(owner),
        "written by the same registration"
    );
    // Counted just after the rename that made the file visible.
    let reregistrations = || registry.health().snapshot().registrations[0].reregistrations;
    let counted = tokio::time::timeout(DEADLINE, async {
        while reregistrations() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(counted.is_ok());
    assert_eq!(reregistrations(), 1);
}

#[tokio::test]
async fn at_most_max_files_are_read_the_first_by_name() {
    let root = tempfile::tempdir().unwrap();
    for port in [11, 12, 13, 14, 15] {
        write_foreign(root.path(), port, Duration::ZERO);
    }
    let registry = DirectoryRegistry::builder(root.path())
        .max_files(3)
        .build()
        .unwrap();
    let watch = registry.subscribe("echo").await.unwrap();
    assert_eq!(ports(&watch), [11, 12, 13]);
}

#[tokio::test]
async fn without_the_root_nothing_registers_or_resolves() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let registry = registry(&missing);
    let refused = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 1).into()))
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Backend {
                backend: "directory",
                ..
            })
        ),
        "{refused:?}"
    );
    let unresolved = registry.subscribe("echo").await;
    assert!(
        matches!(unresolved, Err(Error::Resolve { .. })),
        "{unresolved:?}"
    );
    assert!(!missing.exists(), "the root is never created");
    let escape = registry.subscribe("../etc").await;
    assert!(
        matches!(escape, Err(Error::InvalidInstance(_))),
        "{escape:?}"
    );
}

/// The port lists of every set a watch showed.
type Seen = Arc<Mutex<Vec<Vec<u16>>>>;

/// Every set `watch` wakes its subscriber with, until aborted.
fn record(mut watch: ServiceWatch) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok(snapshot) = watch.changed().await {
                let ports = snapshot
                    .instances
                    .iter()
                    .map(|i| i.address.port())
                    .collect();
                seen.lock().unwrap().push(ports);
            }
        }
    });
    (seen, task)
}

#[tokio::test]
async fn a_vanished_service_directory_is_data_loss_not_an_empty_service() {
    let root = tempfile::tempdir().unwrap();
    let registry = registry(root.path());
    let _registration = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 4).into()))
        .await
        .unwrap();
    let mut watch = registry.subscribe("echo").await.unwrap();
    let (seen, recorder) = record(watch.clone());

    // Five polls fit in a heartbeat: without the hold, the empty set
    // would be shown before the keeper writes the file again.
    fs::remove_dir_all(root.path().join("echo")).unwrap();
    let path = root.path().join("echo/127.0.0.1_4.json");
    let back = tokio::time::timeout(DEADLINE, async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(back.is_ok());
    // Some polls after the file is back.
    tokio::time::sleep(HEARTBEAT).await;
    recorder.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|ports| ports == &[4]), "{seen:?}");
    until_ports(&mut watch, &[4]).await;

    // An instance nobody writes again: held for `stale_after`, then gone
    // (3 s: the file, written once, must stay fresh until the first poll).
    let lonely = tempfile::tempdir().unwrap();
    write_foreign(lonely.path(), 20, Duration::ZERO);
    let registry = DirectoryRegistry::builder(lonely.path())
        .heartbeat(HEARTBEAT)
        .stale_after(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut watch = registry.subscribe("echo").await.unwrap();
    assert_eq!(ports(&watch), [20]);
    let removed = tokio::time::Instant::now();
    fs::remove_dir_all(lonely.path().join("echo")).unwrap();
    until_ports(&mut watch, &[]).await;
    assert!(
        removed.elapsed() >= Duration::from_secs(2),
        "{:?}",
        removed.elapsed()
    );
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

#[tokio::test]
async fn fifos_named_like_instance_files_block_nothing() {
    let root = tempfile::tempdir().unwrap();
    let registry = registry(root.path());
    let _live = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 1).into()))
        .await
        .unwrap();
    let dir = root.path().join("echo");
    let path = dir.join("127.0.0.1_1.json");
    let owner = owner_at(&path).unwrap();
    // A stray FIFO beside it, and one in place of the keeper's own file:
    // opened for reading, either would block its reader for good.
    mkfifo(&dir.join("127.0.0.1_2.json"));
    fs::remove_file(&path).unwrap();
    mkfifo(&path);

    let subscribed = tokio::time::timeout(DEADLINE, registry.subscribe("echo")).await;
    let mut watch = subscribed.expect("the resolver's poll blocked").unwrap();
    // The keeper writes its file again in place of the FIFO.
    let replaced = tokio::time::timeout(DEADLINE, async {
        while !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(replaced.is_ok(), "the keeper never replaced the FIFO");
    assert_eq!(owner_at(&path), Some(owner));
    until_ports(&mut watch, &[1]).await;
}

#[tokio::test]
async fn the_longest_intervals_do_not_overflow() {
    let root = tempfile::tempdir().unwrap();
    write_foreign(root.path(), 30, Duration::ZERO);
    let registry = DirectoryRegistry::builder(root.path())
        .heartbeat(Duration::MAX / 2)
        .poll_interval(Duration::MAX)
        .build()
        .unwrap();
    let subscribed = tokio::time::timeout(DEADLINE, registry.subscribe("echo")).await;
    let watch = subscribed.expect("no first poll").unwrap();
    assert_eq!(ports(&watch), [30]);
    let registration = registry
        .register(Instance::new("echo", ([127, 0, 0, 1], 31).into()))
        .await
        .unwrap();
    registration.deregister().await.unwrap();
    assert!(!root.path().join("echo/127.0.0.1_31.json").exists());
}
