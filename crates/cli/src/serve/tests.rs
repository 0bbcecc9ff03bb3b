//! Settings resolution: flags, then the config file, then defaults.

use super::*;

#[test]
fn config_digest_wait_is_flag_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, "digest_wait = \"2s\"\n").unwrap();
    let wait = |flag: Option<&str>, config: Option<&PathBuf>| {
        resolve(ServeArgs {
            digest_wait: flag.map(Into::into),
            config: config.cloned(),
            ..Default::default()
        })
        .map(|s| s.server.digest_wait)
    };
    assert_eq!(wait(None, None).unwrap(), Duration::from_secs(5));
    assert_eq!(wait(None, Some(&file)).unwrap(), Duration::from_secs(2));
    assert_eq!(
        wait(Some("250ms"), Some(&file)).unwrap(),
        Duration::from_millis(250)
    );
    assert_eq!(wait(Some("0"), None).unwrap(), Duration::ZERO, "at once");
    let e = wait(Some("soon"), None).unwrap_err().to_string();
    assert!(e.contains("--digest-wait"), "{e}");
}

#[test]
fn config_max_metadata_size_is_flag_then_file_then_16k() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(&file, "max_metadata_size = 4096\n").unwrap();
    let max = |flag: Option<&str>, config: Option<&PathBuf>| {
        resolve(ServeArgs {
            max_metadata_size: flag.map(Into::into),
            config: config.cloned(),
            ..Default::default()
        })
        .map(|s| s.server.max_metadata)
    };
    assert_eq!(max(None, None).unwrap(), 16 * 1024);
    assert_eq!(max(None, Some(&file)).unwrap(), 4096);
    assert_eq!(max(Some("64K"), Some(&file)).unwrap(), 64 * 1024);
    let e = max(Some("lots"), None).unwrap_err().to_string();
    assert!(e.contains("--max-metadata-size"), "{e}");
}

#[test]
fn config_creation_limits_are_flag_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    std::fs::write(
        &file,
        "creation_rate = 5\ncreation_burst = 7\nmax_unfinished_uploads = 9\n",
    )
    .unwrap();
    let resolved = |args: ServeArgs| resolve(args).map(|s| s.server);
    let d = resolved(ServeArgs::default()).unwrap();
    assert_eq!(d.creation_rate, Some(CreationRate::DEFAULT));
    assert_eq!(d.max_unfinished, Some(100_000));
    let f = resolved(ServeArgs {
        config: Some(file.clone()),
        ..Default::default()
    })
    .unwrap();
    let rate = f.creation_rate.unwrap();
    assert_eq!((rate.per_second.get(), rate.burst.get()), (5, 7));
    assert_eq!(f.max_unfinished, Some(9));
    let off = resolved(ServeArgs {
        config: Some(file),
        creation_rate: Some(0),
        max_unfinished_uploads: Some(0),
        ..Default::default()
    })
    .unwrap();
    assert_eq!((off.creation_rate, off.max_unfinished), (None, None));
    let e = resolved(ServeArgs {
        creation_burst: Some(0),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--creation-burst"), "{e}");
}
