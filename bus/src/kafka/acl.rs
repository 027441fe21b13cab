//! Kafka's access control lists and SCRAM credentials, managed through
//! librdkafka's admin API: rdkafka's safe wrapper does not cover these
//! calls, so this module calls librdkafka's C functions on the admin
//! client's handle, each on a queue of its own, and copies every result
//! out before the event holding it is freed. Nothing here logs a password.
//!
//! Guarantees: every pointer librdkafka hands out is freed on every path
//! (the `Owned*` guards below); a call that gets no answer within the
//! request timeout is an error, never a silent success.

use std::ffi::{c_char, CStr, CString};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;

use super::{KafkaError, KafkaSettings};

/// The resource an ACL is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    Topic,
    Group,
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// Exactly this name.
    Literal,
    /// Every name starting with it.
    Prefixed,
}

/// What an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Read,
    Write,
    Create,
    Describe,
}

/// One ALLOW rule for a principal from any host: the only kind of ACL
/// backflow writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Acl {
    /// `User:<name>`.
    pub principal: String,
    pub resource: Resource,
    pub name: String,
    pub pattern: Pattern,
    pub operation: Operation,
}

impl std::fmt::Display for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {:?} {} ({:?})",
            self.principal, self.operation, self.resource, self.name, self.pattern
        )
    }
}

fn restype(r: Resource) -> rd::rd_kafka_ResourceType_t {
    match r {
        Resource::Topic => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
        Resource::Group => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP,
    }
}

fn pattern(p: Pattern) -> rd::rd_kafka_ResourcePatternType_t {
    match p {
        Pattern::Literal => rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        Pattern::Prefixed => rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    }
}

fn operation(o: Operation) -> rd::rd_kafka_AclOperation_t {
    use rd::rd_kafka_AclOperation_t as Op;
    match o {
        Operation::Read => Op::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => Op::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::Create => Op::RD_KAFKA_ACL_OPERATION_CREATE,
        Operation::Describe => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE,
    }
}

/// An ACL of a kind backflow never writes (another operation, resource,
/// host, or a DENY), as the broker described it: enough to delete exactly
/// it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    restype: rd::rd_kafka_ResourceType_t,
    pattern: rd::rd_kafka_ResourcePatternType_t,
    operation: rd::rd_kafka_AclOperation_t,
    permission: rd::rd_kafka_AclPermissionType_t,
    /// The resource's name.
    pub name: String,
    principal: String,
    host: String,
}

impl Foreign {
    /// Whether it takes rights away (DENY) rather than giving them.
    pub fn is_deny(&self) -> bool {
        self.permission == rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_DENY
    }

    /// Whether it is on a topic, group or transactional id whose name
    /// pattern cannot match any name starting with `prefix` (another
    /// namespace's resource on a shared cluster). Cluster ACLs, and any
    /// pattern that could reach `prefix`, are not.
    pub fn outside(&self, prefix: &str) -> bool {
        use rd::rd_kafka_ResourcePatternType_t as P;
        use rd::rd_kafka_ResourceType_t as R;
        let named = matches!(
            self.restype,
            R::RD_KAFKA_RESOURCE_TOPIC
                | R::RD_KAFKA_RESOURCE_GROUP
                | R::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID
        );
        named
            && match self.pattern {
                P::RD_KAFKA_RESOURCE_PATTERN_LITERAL => {
                    self.name != "*" && !self.name.starts_with(prefix)
                }
                P::RD_KAFKA_RESOURCE_PATTERN_PREFIXED => {
                    !self.name.starts_with(prefix) && !prefix.starts_with(&self.name)
                }
                _ => false,
            }
    }
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // librdkafka's enum names without their common prefixes.
        let short = |debug: String, prefix: &str| {
            debug
                .strip_prefix(prefix)
                .map(str::to_owned)
                .unwrap_or(debug)
        };
        write!(
            f,
            "{} {} {} {} {} ({}) from host {}",
            self.principal,
            short(
                format!("{:?}", self.permission),
                "RD_KAFKA_ACL_PERMISSION_TYPE_"
            ),
            short(format!("{:?}", self.operation), "RD_KAFKA_ACL_OPERATION_"),
            short(format!("{:?}", self.restype), "RD_KAFKA_RESOURCE_"),
            self.name,
            short(format!("{:?}", self.pattern), "RD_KAFKA_RESOURCE_PATTERN_"),
            self.host
        )
    }
}

impl serde::Serialize for Foreign {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// An ACL as the broker describes it: one of the kind backflow writes, or
/// a [`Foreign`] one.
fn from_binding(b: *const rd::rd_kafka_AclBinding_t) -> Result<Acl, Foreign> {
    use rd::rd_kafka_AclOperation_t as Op;
    // SAFETY: `b` comes from a live result array; the strings it returns
    // live as long as the binding, and are copied here.
    unsafe {
        let text = |p: *const c_char| {
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let foreign = Foreign {
            restype: rd::rd_kafka_AclBinding_restype(b),
            pattern: rd::rd_kafka_AclBinding_resource_pattern_type(b),
            operation: rd::rd_kafka_AclBinding_operation(b),
            permission: rd::rd_kafka_AclBinding_permission_type(b),
            name: text(rd::rd_kafka_AclBinding_name(b)),
            principal: text(rd::rd_kafka_AclBinding_principal(b)),
            host: text(rd::rd_kafka_AclBinding_host(b)),
        };
        if foreign.permission
            != rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW
            || foreign.host != "*"
        {
            return Err(foreign);
        }
        let resource = match foreign.restype {
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC => Resource::Topic,
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP => Resource::Group,
            _ => return Err(foreign),
        };
        let pattern = match foreign.pattern {
            rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL => {
                Pattern::Literal
            }
            rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED => {
                Pattern::Prefixed
            }
            _ => return Err(foreign),
        };
        let operation = match foreign.operation {
            Op::RD_KAFKA_ACL_OPERATION_READ => Operation::Read,
            Op::RD_KAFKA_ACL_OPERATION_WRITE => Operation::Write,
            Op::RD_KAFKA_ACL_OPERATION_CREATE => Operation::Create,
            Op::RD_KAFKA_ACL_OPERATION_DESCRIBE => Operation::Describe,
            _ => return Err(foreign),
        };
        Ok(Acl {
            principal: foreign.principal,
            resource,
            name: foreign.name,
            pattern,
            operation,
        })
    }
}

/// What a principal holds on the cluster: the ACLs of the kinds backflow
/// writes, and every other one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    pub acls: Vec<Acl>,
    pub foreign: Vec<Foreign>,
}

/// The admin calls for ACLs and SCRAM credentials.
pub struct AclAdmin {
    client: AdminClient<DefaultClientContext>,
    timeout: Duration,
}

struct Queue(*mut rd::rd_kafka_queue_t);
impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new, destroyed once.
        unsafe { rd::rd_kafka_queue_destroy(self.0) }
    }
}
struct Options(*mut rd::rd_kafka_AdminOptions_t);
impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_AdminOptions_new, destroyed once.
        unsafe { rd::rd_kafka_AdminOptions_destroy(self.0) }
    }
}
struct Event(*mut rd::rd_kafka_event_t);
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned by rd_kafka_queue_poll, destroyed once.
        unsafe { rd::rd_kafka_event_destroy(self.0) }
    }
}
struct Bindings(Vec<*mut rd::rd_kafka_AclBinding_t>);
impl Drop for Bindings {
    fn drop(&mut self) {
        for b in &self.0 {
            // SAFETY: each made by rd_kafka_AclBinding_new or
            // rd_kafka_AclBindingFilter_new (the same type), freed once.
            unsafe { rd::rd_kafka_AclBinding_destroy(*b) }
        }
    }
}

fn error_text(e: *const rd::rd_kafka_error_t) -> Option<String> {
    // Some results carry an error object whose code says there was none.
    // SAFETY: a non-null error of a live result.
    if e.is_null()
        || unsafe { rd::rd_kafka_error_code(e) }
            == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    {
        return None;
    }
    // SAFETY: a non-null error of a live result; the strings are copied
    // (librdkafka may give no message, only a code).
    unsafe {
        let text = |p: *const c_char| {
            (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
        };
        let name = text(rd::rd_kafka_error_name(e)).unwrap_or_default();
        let message = text(rd::rd_kafka_error_string(e)).filter(|m| m != "(null)");
        Some(match message {
            Some(m) => format!("{name}: {m}"),
            None => name,
        })
    }
}

fn cstring(what: &str, s: &str) -> Result<CString, KafkaError> {
    CString::new(s).map_err(|_| KafkaError::Admin {
        topic: what.to_owned(),
        reason: "contains a NUL byte".to_owned(),
    })
}

fn admin_error(what: &str, reason: impl Into<String>) -> KafkaError {
    KafkaError::Admin {
        topic: what.to_owned(),
        reason: reason.into(),
    }
}

impl AclAdmin {
    /// An admin client of the cluster in `settings` (a real one: the
    /// embedded broker has no ACLs).
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        Ok(Self {
            client: settings.create("acl admin", |_| {})?,
            timeout: settings.request_timeout,
        })
    }

    /// Runs one admin call on a queue of its own and hands its result event
    /// to `read`, on a blocking thread (the wait is librdkafka's).
    fn call<T>(
        &self,
        what: &str,
        op: rd::rd_kafka_admin_op_t,
        start: impl FnOnce(
            *mut rd::rd_kafka_t,
            *const rd::rd_kafka_AdminOptions_t,
            *mut rd::rd_kafka_queue_t,
        ),
        read: impl FnOnce(&Event) -> Result<T, KafkaError>,
    ) -> Result<T, KafkaError> {
        let rk = self.client.inner().native_ptr();
        let timeout_ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `rk` is the live handle of `self.client`; the queue and
        // options are freed by their guards after the event is read.
        unsafe {
            let queue = Queue(rd::rd_kafka_queue_new(rk));
            let options = Options(rd::rd_kafka_AdminOptions_new(rk, op));
            let mut errstr = [0 as c_char; 256];
            rd::rd_kafka_AdminOptions_set_request_timeout(
                options.0,
                timeout_ms,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            start(rk, options.0, queue.0);
            let ev = rd::rd_kafka_queue_poll(queue.0, timeout_ms.saturating_add(1000));
            if ev.is_null() {
                return Err(admin_error(what, "no answer from the cluster in time"));
            }
            let event = Event(ev);
            if rd::rd_kafka_event_error(event.0)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                let text = CStr::from_ptr(rd::rd_kafka_event_error_string(event.0))
                    .to_string_lossy()
                    .into_owned();
                return Err(admin_error(what, text));
            }
            read(&event)
        }
    }

    fn binding(acl: &Acl, filter: bool) -> Result<*mut rd::rd_kafka_AclBinding_t, KafkaError> {
        Self::raw_binding(
            &Foreign {
                restype: restype(acl.resource),
                pattern: pattern(acl.pattern),
                operation: operation(acl.operation),
                permission: rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                name: acl.name.clone(),
                principal: acl.principal.clone(),
                host: "*".to_owned(),
            },
            filter,
        )
    }

    fn raw_binding(
        b: &Foreign,
        filter: bool,
    ) -> Result<*mut rd::rd_kafka_AclBinding_t, KafkaError> {
        let name = cstring("ACL resource", &b.name)?;
        let principal = cstring("ACL principal", &b.principal)?;
        let host = cstring("ACL host", &b.host)?;
        let mut errstr = [0 as c_char; 512];
        // SAFETY: the strings outlive the call, which copies them.
        let made = unsafe {
            let make = if filter {
                rd::rd_kafka_AclBindingFilter_new
            } else {
                rd::rd_kafka_AclBinding_new
            };
            make(
                b.restype,
                name.as_ptr(),
                b.pattern,
                principal.as_ptr(),
                host.as_ptr(),
                b.operation,
                b.permission,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if made.is_null() {
            // SAFETY: librdkafka wrote a NUL-terminated message.
            let why = unsafe { CStr::from_ptr(errstr.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(admin_error(&b.to_string(), why));
        }
        Ok(made)
    }

    /// Creates these ACLs (creating one that exists changes nothing).
    pub fn create(&self, acls: &[Acl]) -> Result<(), KafkaError> {
        if acls.is_empty() {
            return Ok(());
        }
        let mut bindings = Bindings(Vec::new());
        for acl in acls {
            bindings.0.push(Self::binding(acl, false)?);
        }
        self.call(
            "creating ACLs",
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
            // SAFETY (inside `call`): the bindings stay alive until the
            // call returned; librdkafka copies them.
            |rk, options, queue| unsafe {
                rd::rd_kafka_CreateAcls(
                    rk,
                    bindings.0.as_mut_ptr(),
                    bindings.0.len(),
                    options,
                    queue,
                )
            },
            |event| unsafe {
                let result = rd::rd_kafka_event_CreateAcls_result(event.0);
                let mut n = 0;
                let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut n);
                for (i, acl) in acls.iter().enumerate().take(n) {
                    if let Some(why) = error_text(rd::rd_kafka_acl_result_error(*results.add(i))) {
                        return Err(admin_error(&acl.to_string(), why));
                    }
                }
                Ok(())
            },
        )
    }

    /// Deletes exactly these ACLs.
    pub fn delete(&self, acls: &[Acl]) -> Result<(), KafkaError> {
        let mut filters = Bindings(Vec::new());
        for acl in acls {
            filters.0.push(Self::binding(acl, true)?);
        }
        let names: Vec<String> = acls.iter().map(Acl::to_string).collect();
        self.delete_filters(filters, &names)
    }

    /// Deletes exactly these ACLs of other kinds.
    pub fn delete_foreign(&self, acls: &[Foreign]) -> Result<(), KafkaError> {
        let mut filters = Bindings(Vec::new());
        for acl in acls {
            filters.0.push(Self::raw_binding(acl, true)?);
        }
        let names: Vec<String> = acls.iter().map(Foreign::to_string).collect();
        self.delete_filters(filters, &names)
    }

    fn delete_filters(&self, mut filters: Bindings, acls: &[String]) -> Result<(), KafkaError> {
        if acls.is_empty() {
            return Ok(());
        }
        self.call(
            "deleting ACLs",
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DELETEACLS,
            |rk, options, queue| unsafe {
                rd::rd_kafka_DeleteAcls(rk, filters.0.as_mut_ptr(), filters.0.len(), options, queue)
            },
            |event| unsafe {
                let result = rd::rd_kafka_event_DeleteAcls_result(event.0);
                let mut n = 0;
                let responses = rd::rd_kafka_DeleteAcls_result_responses(result, &mut n);
                // One answer per filter: a missing one is a deletion not
                // confirmed.
                if n != acls.len() {
                    return Err(admin_error(
                        &acls.join(", "),
                        format!("the cluster answered {n} of {} deletions", acls.len()),
                    ));
                }
                for (i, acl) in acls.iter().enumerate() {
                    if let Some(why) = error_text(rd::rd_kafka_DeleteAcls_result_response_error(
                        *responses.add(i),
                    )) {
                        return Err(admin_error(acl, why));
                    }
                }
                Ok(())
            },
        )
    }

    /// Every ACL of `principal` (`User:<name>`) on the cluster.
    pub fn held_by(&self, principal: &str) -> Result<Held, KafkaError> {
        let principal_c = cstring("ACL principal", principal)?;
        let mut errstr = [0 as c_char; 512];
        // SAFETY: the strings outlive the call, which copies them; a null
        // name and host match any.
        let filter = unsafe {
            rd::rd_kafka_AclBindingFilter_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY,
                std::ptr::null(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY,
                principal_c.as_ptr(),
                std::ptr::null(),
                rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY,
                rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
                errstr.as_mut_ptr(),
                errstr.len(),
            )
        };
        if filter.is_null() {
            // SAFETY: librdkafka wrote a NUL-terminated message.
            let why = unsafe { CStr::from_ptr(errstr.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(admin_error(principal, why));
        }
        let filter = Bindings(vec![filter]);
        self.call(
            "describing ACLs",
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
            |rk, options, queue| unsafe {
                rd::rd_kafka_DescribeAcls(rk, filter.0[0], options, queue)
            },
            |event| unsafe {
                let result = rd::rd_kafka_event_DescribeAcls_result(event.0);
                let mut n = 0;
                let acls = rd::rd_kafka_DescribeAcls_result_acls(result, &mut n);
                let mut held = Held::default();
                for i in 0..n {
                    match from_binding(*acls.add(i)) {
                        Ok(acl) => held.acls.push(acl),
                        Err(other) => held.foreign.push(other),
                    }
                }
                held.acls.sort();
                Ok(held)
            },
        )
    }

    /// Sets `user`'s SCRAM-SHA-512 password (creating the user).
    pub fn set_scram_password(&self, user: &str, password: &str) -> Result<(), KafkaError> {
        self.alter_scram(user, Some(password))
    }

    /// Deletes `user`'s SCRAM-SHA-512 credential (it can no longer log in).
    pub fn delete_scram(&self, user: &str) -> Result<(), KafkaError> {
        self.alter_scram(user, None)
    }

    fn alter_scram(&self, user: &str, password: Option<&str>) -> Result<(), KafkaError> {
        let user_c = cstring("SCRAM user", user)?;
        let mechanism = rd::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512;
        let salt: [u8; 32] = rand_bytes();
        // SAFETY: the strings and buffers outlive the call, which copies
        // them; the alteration is freed below.
        let alteration = unsafe {
            match password {
                Some(p) => rd::rd_kafka_UserScramCredentialUpsertion_new(
                    user_c.as_ptr(),
                    mechanism,
                    8192,
                    p.as_ptr(),
                    p.len(),
                    salt.as_ptr(),
                    salt.len(),
                ),
                None => rd::rd_kafka_UserScramCredentialDeletion_new(user_c.as_ptr(), mechanism),
            }
        };
        struct Alteration(*mut rd::rd_kafka_UserScramCredentialAlteration_t);
        impl Drop for Alteration {
            fn drop(&mut self) {
                // SAFETY: made above, freed once.
                unsafe { rd::rd_kafka_UserScramCredentialAlteration_destroy(self.0) }
            }
        }
        let mut alteration = Alteration(alteration);
        let what = format!("SCRAM credential of {user}");
        self.call(
            &what,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
            |rk, options, queue| unsafe {
                rd::rd_kafka_AlterUserScramCredentials(rk, &mut alteration.0, 1, options, queue)
            },
            |event| unsafe {
                let result = rd::rd_kafka_event_AlterUserScramCredentials_result(event.0);
                let mut n = 0;
                let responses =
                    rd::rd_kafka_AlterUserScramCredentials_result_responses(result, &mut n);
                for i in 0..n {
                    let e = rd::rd_kafka_AlterUserScramCredentials_result_response_error(
                        *responses.add(i),
                    );
                    if let Some(why) = error_text(e) {
                        return Err(admin_error(&what, why));
                    }
                }
                Ok(())
            },
        )
    }
}

/// Random bytes from the operating system.
fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b
}
