//! Result codes: the `u8` at offset 5 of the as_msg header (wire spec §5).
//!
//! Names follow the server's (`as/include/base/proto.h`) with the `AS_`/`ERR_` prefixes dropped;
//! where the brief or the client name is clearer it is used instead and the other is in the doc.
//! Negative codes are client-side only and have no constant here.

/// 0: success (`AS_OK`).
pub const OK: u8 = 0;
/// 1: generic server error (server `ERR_UNKNOWN`, client `ERR_SERVER`).
pub const SERVER_ERROR: u8 = 1;
/// 2: record missing: read, update-only, replace-only, delete or touch of a missing record.
pub const KEY_NOT_FOUND: u8 = 2;
/// 3: generation check failed (info2 GENERATION / GENERATION_GT, §6.2).
pub const GENERATION: u8 = 3;
/// 4: bad request or parameter (server `ERR_PARAMETER`, client `ERR_REQUEST_INVALID`).
pub const PARAMETER: u8 = 4;
/// 5: create-only write on an existing live record (server `ERR_RECORD_EXISTS`).
pub const KEY_EXISTS: u8 = 5;
/// 6: bin exists (create-only bin ops).
pub const BIN_EXISTS: u8 = 6;
/// 7: cluster changed during a scan/query (server `ERR_CLUSTER_KEY_MISMATCH`; the client retries).
pub const CLUSTER_KEY_MISMATCH: u8 = 7;
/// 8: partition or device out of space (client `ERR_SERVER_FULL`).
pub const OUT_OF_SPACE: u8 = 8;
/// 9: server-side timeout (the client retries).
pub const TIMEOUT: u8 = 9;
/// 10: unused by the server (XDR); client `ERR_ALWAYS_FORBIDDEN`.
pub const ALWAYS_FORBIDDEN: u8 = 10;
/// 11: partition unavailable; the only non-OK code Rust accepts in a partition-done message.
pub const UNAVAILABLE: u8 = 11;
/// 12: op not valid for the bin's type, e.g. incr on a string (`ERR_INCOMPATIBLE_TYPE`).
pub const INCOMPATIBLE_TYPE: u8 = 12;
/// 13: record larger than the namespace's max-record-size (default 1 MiB, §10.4).
pub const RECORD_TOO_BIG: u8 = 13;
/// 14: hot key (client `ERR_RECORD_BUSY`).
pub const KEY_BUSY: u8 = 14;
/// 15: scan/query aborted (server `ERR_QUERY_ABORT`, client `ERR_SCAN_ABORTED`).
pub const QUERY_ABORTED: u8 = 15;
/// 16: feature not supported (also: a basic scan/query without info3 PARTITION_DONE, §3.2).
pub const UNSUPPORTED_FEATURE: u8 = 16;
/// 17: bin missing (update-only bin ops).
pub const BIN_NOT_FOUND: u8 = 17;
/// 18: storage overloaded (the client retries).
pub const DEVICE_OVERLOAD: u8 = 18;
/// 19: the sent key differs from the stored key (§10.6; client `ERR_RECORD_KEY_MISMATCH`).
pub const KEY_MISMATCH: u8 = 19;
/// 20: unknown namespace (server `ERR_NAMESPACE`).
pub const NAMESPACE_NOT_FOUND: u8 = 20;
/// 21: bin name too long (over 15 bytes) or invalid (server `ERR_BIN_NAME`).
pub const BIN_NAME_TOO_LONG: u8 = 21;
/// 22: operation forbidden, e.g. a TTL while nsup is disabled, truncate in progress.
pub const FAIL_FORBIDDEN: u8 = 22;
/// 23: CDT element missing.
pub const ELEMENT_NOT_FOUND: u8 = 23;
/// 24: CDT element exists.
pub const ELEMENT_EXISTS: u8 = 24;
/// 25: Enterprise-only feature (the CE server answers compressed requests with it, §8).
pub const ENTERPRISE_ONLY: u8 = 25;
/// 26: op not applicable.
pub const OP_NOT_APPLICABLE: u8 = 26;
/// 27: the filter expression (field 43) evaluated false.
pub const FILTERED_OUT: u8 = 27;
/// 28: an XDR write lost a conflict.
pub const LOST_CONFLICT: u8 = 28;
/// 29: unused by the server; client 7.5 `INVALID_ENCODING`.
pub const INVALID_ENCODING: u8 = 29;
/// 32: XDR key busy.
pub const XDR_KEY_BUSY: u8 = 32;

/// 50: admin: last message of a stream (client `QUERY_END`).
pub const SEC_OK_LAST: u8 = 50;
/// 51: security not supported (the CE server answers every admin message with it, §10.9).
pub const SECURITY_NOT_SUPPORTED: u8 = 51;
/// 52: security not enabled; the C client takes it in a LOGIN reply as "no login needed" (§10.9).
pub const SECURITY_NOT_ENABLED: u8 = 52;
/// 53: security scheme error.
pub const SECURITY_SCHEME: u8 = 53;
/// 54: unknown admin command.
pub const INVALID_COMMAND: u8 = 54;
/// 55: bad admin field.
pub const INVALID_FIELD: u8 = 55;
/// 56: illegal security state.
pub const ILLEGAL_STATE: u8 = 56;
/// 60: bad user.
pub const INVALID_USER: u8 = 60;
/// 61: user exists.
pub const USER_ALREADY_EXISTS: u8 = 61;
/// 62: bad password.
pub const INVALID_PASSWORD: u8 = 62;
/// 63: password expired.
pub const EXPIRED_PASSWORD: u8 = 63;
/// 64: forbidden password.
pub const FORBIDDEN_PASSWORD: u8 = 64;
/// 65: bad credential.
pub const INVALID_CREDENTIAL: u8 = 65;
/// 66: session expired.
pub const EXPIRED_SESSION: u8 = 66;
/// 70: bad role.
pub const INVALID_ROLE: u8 = 70;
/// 71: role exists.
pub const ROLE_ALREADY_EXISTS: u8 = 71;
/// 72: bad privilege.
pub const INVALID_PRIVILEGE: u8 = 72;
/// 73: bad whitelist.
pub const INVALID_WHITELIST: u8 = 73;
/// 74: quotas not enabled.
pub const QUOTAS_NOT_ENABLED: u8 = 74;
/// 75: bad quota.
pub const INVALID_QUOTA: u8 = 75;
/// 80: not authenticated.
pub const NOT_AUTHENTICATED: u8 = 80;
/// 81: role violation.
pub const ROLE_VIOLATION: u8 = 81;
/// 82: client address not whitelisted.
pub const NOT_WHITELISTED: u8 = 82;
/// 83: quota exceeded.
pub const QUOTA_EXCEEDED: u8 = 83;
/// 90: first of the LDAP errors (90–94).
pub const LDAP_FIRST: u8 = 90;
/// 94: last of the LDAP errors (90–94).
pub const LDAP_LAST: u8 = 94;
/// 100: UDF failed; the reply carries a `FAILURE` string bin (§10.7).
pub const UDF_EXECUTION: u8 = 100;
/// 120: transaction (MRT) blocked.
pub const MRT_BLOCKED: u8 = 120;
/// 121: transaction record version mismatch.
pub const MRT_VERSION_MISMATCH: u8 = 121;
/// 122: transaction expired.
pub const MRT_EXPIRED: u8 = 122;
/// 123: transaction has too many writes.
pub const MRT_TOO_MANY_WRITES: u8 = 123;
/// 124: transaction already committed.
pub const MRT_COMMITTED: u8 = 124;
/// 125: transaction already aborted.
pub const MRT_ABORTED: u8 = 125;
/// 126: record already locked by another transaction.
pub const MRT_ALREADY_LOCKED: u8 = 126;
/// 127: transaction monitor exists.
pub const MRT_MONITOR_EXISTS: u8 = 127;
/// 150: batch disabled.
pub const BATCH_DISABLED: u8 = 150;
/// 151: too many rows in one batch request.
pub const BATCH_MAX_REQUESTS: u8 = 151;
/// 152: batch queues full.
pub const BATCH_QUEUES_FULL: u8 = 152;
/// 160: invalid GeoJSON.
pub const GEO_INVALID_GEOJSON: u8 = 160;
/// 200: secondary index found (already exists).
pub const SINDEX_FOUND: u8 = 200;
/// 201: secondary index not found.
pub const SINDEX_NOT_FOUND: u8 = 201;
/// 202: secondary index out of memory.
pub const SINDEX_OOM: u8 = 202;
/// 203: secondary index not readable.
pub const SINDEX_NOT_READABLE: u8 = 203;
/// 204: generic secondary index error.
pub const SINDEX_GENERIC: u8 = 204;
/// 205: bad secondary index name.
pub const SINDEX_NAME: u8 = 205;
/// 206: too many secondary indexes.
pub const SINDEX_MAX_COUNT: u8 = 206;

/// A short name for a code, for logs (`"PARAMETER"`); `"UNKNOWN"` for codes without a constant.
pub fn name(code: u8) -> &'static str {
    match code {
        OK => "OK",
        SERVER_ERROR => "SERVER_ERROR",
        KEY_NOT_FOUND => "KEY_NOT_FOUND",
        GENERATION => "GENERATION",
        PARAMETER => "PARAMETER",
        KEY_EXISTS => "KEY_EXISTS",
        BIN_EXISTS => "BIN_EXISTS",
        CLUSTER_KEY_MISMATCH => "CLUSTER_KEY_MISMATCH",
        OUT_OF_SPACE => "OUT_OF_SPACE",
        TIMEOUT => "TIMEOUT",
        ALWAYS_FORBIDDEN => "ALWAYS_FORBIDDEN",
        UNAVAILABLE => "UNAVAILABLE",
        INCOMPATIBLE_TYPE => "INCOMPATIBLE_TYPE",
        RECORD_TOO_BIG => "RECORD_TOO_BIG",
        KEY_BUSY => "KEY_BUSY",
        QUERY_ABORTED => "QUERY_ABORTED",
        UNSUPPORTED_FEATURE => "UNSUPPORTED_FEATURE",
        BIN_NOT_FOUND => "BIN_NOT_FOUND",
        DEVICE_OVERLOAD => "DEVICE_OVERLOAD",
        KEY_MISMATCH => "KEY_MISMATCH",
        NAMESPACE_NOT_FOUND => "NAMESPACE_NOT_FOUND",
        BIN_NAME_TOO_LONG => "BIN_NAME_TOO_LONG",
        FAIL_FORBIDDEN => "FAIL_FORBIDDEN",
        ELEMENT_NOT_FOUND => "ELEMENT_NOT_FOUND",
        ELEMENT_EXISTS => "ELEMENT_EXISTS",
        ENTERPRISE_ONLY => "ENTERPRISE_ONLY",
        OP_NOT_APPLICABLE => "OP_NOT_APPLICABLE",
        FILTERED_OUT => "FILTERED_OUT",
        LOST_CONFLICT => "LOST_CONFLICT",
        INVALID_ENCODING => "INVALID_ENCODING",
        XDR_KEY_BUSY => "XDR_KEY_BUSY",
        SEC_OK_LAST => "SEC_OK_LAST",
        SECURITY_NOT_SUPPORTED => "SECURITY_NOT_SUPPORTED",
        SECURITY_NOT_ENABLED => "SECURITY_NOT_ENABLED",
        SECURITY_SCHEME => "SECURITY_SCHEME",
        INVALID_COMMAND => "INVALID_COMMAND",
        INVALID_FIELD => "INVALID_FIELD",
        ILLEGAL_STATE => "ILLEGAL_STATE",
        INVALID_USER => "INVALID_USER",
        USER_ALREADY_EXISTS => "USER_ALREADY_EXISTS",
        INVALID_PASSWORD => "INVALID_PASSWORD",
        EXPIRED_PASSWORD => "EXPIRED_PASSWORD",
        FORBIDDEN_PASSWORD => "FORBIDDEN_PASSWORD",
        INVALID_CREDENTIAL => "INVALID_CREDENTIAL",
        EXPIRED_SESSION => "EXPIRED_SESSION",
        INVALID_ROLE => "INVALID_ROLE",
        ROLE_ALREADY_EXISTS => "ROLE_ALREADY_EXISTS",
        INVALID_PRIVILEGE => "INVALID_PRIVILEGE",
        INVALID_WHITELIST => "INVALID_WHITELIST",
        QUOTAS_NOT_ENABLED => "QUOTAS_NOT_ENABLED",
        INVALID_QUOTA => "INVALID_QUOTA",
        NOT_AUTHENTICATED => "NOT_AUTHENTICATED",
        ROLE_VIOLATION => "ROLE_VIOLATION",
        NOT_WHITELISTED => "NOT_WHITELISTED",
        QUOTA_EXCEEDED => "QUOTA_EXCEEDED",
        LDAP_FIRST..=LDAP_LAST => "LDAP_ERROR",
        UDF_EXECUTION => "UDF_EXECUTION",
        MRT_BLOCKED => "MRT_BLOCKED",
        MRT_VERSION_MISMATCH => "MRT_VERSION_MISMATCH",
        MRT_EXPIRED => "MRT_EXPIRED",
        MRT_TOO_MANY_WRITES => "MRT_TOO_MANY_WRITES",
        MRT_COMMITTED => "MRT_COMMITTED",
        MRT_ABORTED => "MRT_ABORTED",
        MRT_ALREADY_LOCKED => "MRT_ALREADY_LOCKED",
        MRT_MONITOR_EXISTS => "MRT_MONITOR_EXISTS",
        BATCH_DISABLED => "BATCH_DISABLED",
        BATCH_MAX_REQUESTS => "BATCH_MAX_REQUESTS",
        BATCH_QUEUES_FULL => "BATCH_QUEUES_FULL",
        GEO_INVALID_GEOJSON => "GEO_INVALID_GEOJSON",
        SINDEX_FOUND => "SINDEX_FOUND",
        SINDEX_NOT_FOUND => "SINDEX_NOT_FOUND",
        SINDEX_OOM => "SINDEX_OOM",
        SINDEX_NOT_READABLE => "SINDEX_NOT_READABLE",
        SINDEX_GENERIC => "SINDEX_GENERIC",
        SINDEX_NAME => "SINDEX_NAME",
        SINDEX_MAX_COUNT => "SINDEX_MAX_COUNT",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_spec_section_5() {
        let table = [
            (OK, 0),
            (SERVER_ERROR, 1),
            (KEY_NOT_FOUND, 2),
            (GENERATION, 3),
            (PARAMETER, 4),
            (KEY_EXISTS, 5),
            (BIN_EXISTS, 6),
            (OUT_OF_SPACE, 8),
            (UNAVAILABLE, 11),
            (RECORD_TOO_BIG, 13),
            (KEY_BUSY, 14),
            (UNSUPPORTED_FEATURE, 16),
            (DEVICE_OVERLOAD, 18),
            (KEY_MISMATCH, 19),
            (NAMESPACE_NOT_FOUND, 20),
            (BIN_NAME_TOO_LONG, 21),
            (FAIL_FORBIDDEN, 22),
            (ENTERPRISE_ONLY, 25),
            (OP_NOT_APPLICABLE, 26),
            (FILTERED_OUT, 27),
            (SECURITY_NOT_ENABLED, 52),
            (UDF_EXECUTION, 100),
            (BATCH_MAX_REQUESTS, 151),
        ];
        for (c, n) in table {
            assert_eq!(c, n, "{}", name(c));
        }
    }

    #[test]
    fn every_named_code_has_a_distinct_name() {
        let mut seen = std::collections::HashMap::new();
        for c in 0..=255u8 {
            let n = name(c);
            if n == "UNKNOWN" || n == "LDAP_ERROR" {
                continue;
            }
            assert!(seen.insert(n, c).is_none(), "{n} used twice");
        }
        assert_eq!(name(PARAMETER), "PARAMETER");
        assert_eq!(name(255), "UNKNOWN");
    }
}
