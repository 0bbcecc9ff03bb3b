//! `ferry serve --store`: where upload data goes. The data directory by default; an
//! S3-compatible bucket with `--store s3://BUCKET[/PREFIX]` (metadata stays in the data
//! directory). Credentials come from the AWS variables or the config file, never a flag (a
//! flag shows in `ps`).

use anyhow::{Context, Result, bail};
use clap::Args;
use ferry_store::s3::S3Config;

#[derive(Args, Debug, Default)]
pub struct StoreArgs {
    /// Where upload data goes: the data directory, or an S3-compatible bucket
    /// (s3://BUCKET[/PREFIX]; credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_SESSION_TOKEN or the config file). [default: the data directory]
    #[arg(long, env = "FERRY_STORE", value_name = "URL")]
    store: Option<String>,
    /// The S3 service for a store other than AWS, e.g. http://127.0.0.1:8333.
    /// [default: https://s3.REGION.amazonaws.com]
    #[arg(long, env = "FERRY_S3_ENDPOINT", value_name = "URL")]
    s3_endpoint: Option<String>,
    /// The region requests are signed for. [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "FERRY_S3_REGION", value_name = "REGION")]
    s3_region: Option<String>,
    /// Address buckets as https://host/BUCKET rather than https://BUCKET.host.
    /// [default: true with --s3-endpoint, else false]
    #[arg(long, env = "FERRY_S3_PATH_STYLE", value_name = "BOOL")]
    s3_path_style: Option<bool>,
}

/// The same settings in the config file, plus the credentials (keys of `FileConfig`). No
/// `Debug`: it holds the secret.
#[derive(Default)]
pub struct StoreFile {
    pub store: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    pub s3_session_token: Option<String>,
}

/// Where the data goes, resolved.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    /// Files under the data directory.
    Local,
    /// Objects in a bucket, under `prefix` (empty or ending in `/`).
    S3 {
        /// Where and who.
        config: Box<S3Config>,
        /// The key prefix.
        prefix: String,
    },
}

/// `s3://BUCKET[/PREFIX]` split into the bucket and a prefix that is empty or ends in `/`.
fn bucket_and_prefix(url: &str) -> Result<(String, String)> {
    let Some(rest) = url.strip_prefix("s3://") else {
        bail!(
            "--store {url:?}: only s3://BUCKET[/PREFIX] is known (the default is the data directory)"
        );
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        bail!("--store {url:?}: {bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, '-', '.')");
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        bail!("--store {url:?}: the prefix has an empty, '.' or '..' segment");
    }
    let prefix = match prefix.is_empty() {
        true => String::new(),
        false => format!("{prefix}/"),
    };
    Ok((bucket.to_string(), prefix))
}

/// Resolves the store settings: flags (and their variables) first, then the file.
pub fn resolve(
    args: StoreArgs,
    file: StoreFile,
    env: impl Fn(&str) -> Option<String>,
) -> Result<StoreChoice> {
    let Some(url) = args.store.or(file.store) else {
        return Ok(StoreChoice::Local);
    };
    let (bucket, prefix) = bucket_and_prefix(&url)?;
    let region = args
        .s3_region
        .or(file.s3_region)
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint_given = args.s3_endpoint.or(file.s3_endpoint);
    let path_style = args
        .s3_path_style
        .or(file.s3_path_style)
        .unwrap_or(endpoint_given.is_some());
    let endpoint = endpoint_given
        .clone()
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    // Not echoed: it might hold a password.
    let endpoint: reqwest::Url = endpoint
        .parse()
        .map_err(|_| anyhow::anyhow!("--s3-endpoint is not a URL"))?;
    if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
        bail!("--s3-endpoint {endpoint}: an http:// or https:// URL with a host");
    }
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        bail!(
            "--s3-endpoint: no user or password in the URL (credentials go in AWS_* or the config file)"
        );
    }
    // All from one place: the environment when it names a key, else the file (a key from one
    // and a secret or token from the other would fail as a confusing 403).
    let (key, secret, token) = match env("AWS_ACCESS_KEY_ID") {
        Some(key) => (
            Some(key),
            env("AWS_SECRET_ACCESS_KEY"),
            env("AWS_SESSION_TOKEN"),
        ),
        None => (
            file.s3_access_key_id,
            file.s3_secret_access_key,
            file.s3_session_token,
        ),
    };
    if key.is_some() && secret.is_none() && env("AWS_ACCESS_KEY_ID").is_some() {
        bail!("--store {url}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not");
    }
    let (Some(key), Some(secret)) = (key, secret) else {
        bail!(
            "--store {url}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or s3_access_key_id and s3_secret_access_key in the config file)"
        );
    };
    Ok(StoreChoice::S3 {
        config: Box::new(S3Config {
            endpoint,
            bucket,
            region,
            path_style,
            key,
            secret,
            token,
        }),
        prefix,
    })
}

/// The store is not set up as ferry needs it (missing bucket, permission or credentials):
/// `ferry serve` exits 2 with this one line.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

/// The S3 store `choice` names (`None` for the data directory's own), not yet checked: no
/// request is made and nothing is written before the data directory is locked and its
/// records' store is known ([`check`]).
pub fn prepare(
    choice: &StoreChoice,
    data_dir: &std::path::Path,
) -> Result<Option<ferry_store::s3::S3DataStore>> {
    let StoreChoice::S3 { config, prefix } = choice else {
        return Ok(None);
    };
    let client = ferry_store::s3::S3Client::new(config)?;
    // A writer spools what it receives here before it goes to the bucket.
    let store = ferry_store::s3::S3DataStore::new(client, prefix, &data_dir.join("s3-spool"))?;
    Ok(Some(store))
}

/// Checks the S3 store once the data directory is locked and the records bound to it: the
/// bucket and the permissions ferry needs, then the prefix claimed for `owner`; then empties the spool
/// of a dead process's files. A wrong setting is a [`SetupError`] (exit 2), an unreachable
/// store a plain error (exit 1).
pub async fn check(
    store: &ferry_store::s3::S3DataStore,
    choice: &StoreChoice,
    owner: &str,
) -> Result<()> {
    use ferry_store::s3::AccessError;
    let checked = match store.check_access().await {
        Ok(()) => store.claim(owner).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(()) => {}
        Err(AccessError::Setup(why)) => return Err(SetupError(why).into()),
        Err(AccessError::Unavailable(why)) => bail!("{why}"),
    }
    store.empty_spool()?;
    if let StoreChoice::S3 { config, prefix } = choice {
        tracing::info!(bucket = %config.bucket, prefix = %prefix, endpoint = %config.endpoint, "uploads go to S3");
    }
    Ok(())
}

/// For `ferry fsck`: the prefix must be this data directory's (its owner marker names the
/// directory's `s3-owner`), checked without writing anything. A [`SetupError`] otherwise.
pub async fn check_owned(
    store: &ferry_store::s3::S3DataStore,
    data_dir: &std::path::Path,
) -> Result<()> {
    let path = data_dir.join("s3-owner");
    let Ok(mine) = std::fs::read_to_string(&path) else {
        return Err(SetupError(format!(
            "{} has never served {} (no s3-owner): give the --store it serves",
            data_dir.display(),
            ferry_store::data::DataStore::identity(store)
        ))
        .into());
    };
    check_owner(store, mine.trim(), &data_dir.display().to_string()).await
}

/// The prefix's owner marker must name `owner` (of `holder`, in the message), read without
/// writing anything. A [`SetupError`] otherwise.
pub async fn check_owner(
    store: &ferry_store::s3::S3DataStore,
    owner: &str,
    holder: &str,
) -> Result<()> {
    match store.owner().await {
        Ok(Some(marked)) if marked == owner => Ok(()),
        Ok(_) => Err(SetupError(format!(
            "{} is not {holder}'s prefix (its owner marker names another, or none)",
            ferry_store::data::DataStore::identity(store),
        ))
        .into()),
        Err(e) => bail!("{e}"),
    }
}

/// This data directory's id, when it has one (read only).
pub fn existing_dir_owner(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("s3-owner");
    match std::fs::read_to_string(&path) {
        Ok(id) => Ok(id.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} has never been served (no s3-owner)", data_dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A new owner id: 32 random hex digits.
pub fn new_owner_id() -> String {
    let mut b = [0u8; 16];
    // getrandom fails only without an entropy source, where nothing else works either.
    getrandom::fill(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// This data directory's id (`s3-owner`, 32 hex digits, made on first use and written
/// atomically): what the prefix's owner marker names when the records are in the directory,
/// and what binds a PostgreSQL database to the directory's local files.
pub fn dir_owner(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("s3-owner");
    match std::fs::read_to_string(&path) {
        Ok(id) => {
            let id = id.trim().to_string();
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("{} is not an owner id (32 hex digits)", path.display());
            }
            return Ok(id);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let id = new_owner_id();
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let tmp = data_dir.join("s3-owner.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(id.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const CREDS: [(&str, &str); 2] = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];

    fn s3(args: StoreArgs, file: StoreFile, env: &[(&str, &str)]) -> (S3Config, String) {
        match resolve(args, file, env_with(env)).unwrap() {
            StoreChoice::S3 { config, prefix } => (*config, prefix),
            StoreChoice::Local => panic!("not S3"),
        }
    }

    #[test]
    fn the_default_is_the_data_directory() {
        let got = resolve(StoreArgs::default(), StoreFile::default(), env_with(&CREDS));
        assert!(matches!(got.unwrap(), StoreChoice::Local));
    }

    #[test]
    fn aws_by_default_a_given_endpoint_with_path_style() {
        let args = StoreArgs {
            store: Some("s3://my-bucket/a/b/".into()),
            ..StoreArgs::default()
        };
        let (c, prefix) = s3(
            args,
            StoreFile::default(),
            &[CREDS[0], CREDS[1], ("AWS_REGION", "eu-west-3")],
        );
        assert_eq!(c.endpoint.as_str(), "https://s3.eu-west-3.amazonaws.com/");
        assert_eq!(
            (c.bucket.as_str(), prefix.as_str(), c.path_style),
            ("my-bucket", "a/b/", false)
        );
        let args = StoreArgs {
            store: Some("s3://bkt".into()),
            s3_endpoint: Some("http://127.0.0.1:8333".into()),
            ..StoreArgs::default()
        };
        let (c, prefix) = s3(args, StoreFile::default(), &CREDS);
        assert_eq!(
            (c.region.as_str(), prefix.as_str(), c.path_style),
            ("us-east-1", "", true)
        );
    }

    #[test]
    fn credentials_come_from_the_environment_else_the_file() {
        let file = StoreFile {
            store: Some("s3://bkt".into()),
            s3_access_key_id: Some("fk".into()),
            s3_secret_access_key: Some("fs".into()),
            ..StoreFile::default()
        };
        let (c, _) = s3(StoreArgs::default(), file, &[]);
        assert_eq!((c.key.as_str(), c.secret.as_str()), ("fk", "fs"));
        let file = StoreFile {
            store: Some("s3://bkt".into()),
            ..StoreFile::default()
        };
        let err = resolve(StoreArgs::default(), file, env_with(&[])).unwrap_err();
        assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("file:///x", "only s3://"),
            ("s3://B", "not a bucket name"),
            ("s3://ab", "not a bucket name"),
            ("s3://bkt/../x", "'..'"),
            ("s3://bkt/a//b", "empty"),
        ] {
            let args = StoreArgs {
                store: Some(url.into()),
                ..StoreArgs::default()
            };
            let err = resolve(args, StoreFile::default(), env_with(&CREDS)).unwrap_err();
            assert!(err.to_string().contains(why), "{url}: {err}");
        }
    }
}
