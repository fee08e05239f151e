//! gRPC status codes as a type, not bare numbers.

/// A gRPC status code (`grpc-status`), with the codes' names and what each
/// layer needs of them: the metric label and whether a server failed.
///
/// ```
/// use rpc_ext_core::GrpcCode;
///
/// let code = GrpcCode::new(14);
/// assert_eq!(code, GrpcCode::UNAVAILABLE);
/// assert_eq!(code.as_label(), "14");
/// assert_eq!(code.name(), "UNAVAILABLE");
/// assert!(code.is_server_error());
/// assert!(!GrpcCode::NOT_FOUND.is_server_error()); // the caller's mistake
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCode(i32);

impl GrpcCode {
    /// `OK`
    pub const OK: Self = Self(0);
    /// `CANCELLED`
    pub const CANCELLED: Self = Self(1);
    /// `UNKNOWN`
    pub const UNKNOWN: Self = Self(2);
    /// `INVALID_ARGUMENT`
    pub const INVALID_ARGUMENT: Self = Self(3);
    /// `DEADLINE_EXCEEDED`
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    /// `NOT_FOUND`
    pub const NOT_FOUND: Self = Self(5);
    /// `ALREADY_EXISTS`
    pub const ALREADY_EXISTS: Self = Self(6);
    /// `PERMISSION_DENIED`
    pub const PERMISSION_DENIED: Self = Self(7);
    /// `RESOURCE_EXHAUSTED`
    pub const RESOURCE_EXHAUSTED: Self = Self(8);
    /// `FAILED_PRECONDITION`
    pub const FAILED_PRECONDITION: Self = Self(9);
    /// `ABORTED`
    pub const ABORTED: Self = Self(10);
    /// `OUT_OF_RANGE`
    pub const OUT_OF_RANGE: Self = Self(11);
    /// `UNIMPLEMENTED`
    pub const UNIMPLEMENTED: Self = Self(12);
    /// `INTERNAL`
    pub const INTERNAL: Self = Self(13);
    /// `UNAVAILABLE`
    pub const UNAVAILABLE: Self = Self(14);
    /// `DATA_LOSS`
    pub const DATA_LOSS: Self = Self(15);
    /// `UNAUTHENTICATED`
    pub const UNAUTHENTICATED: Self = Self(16);

    /// The code of a number; numbers gRPC does not define read as
    /// `UNKNOWN`, as gRPC itself maps them.
    #[must_use]
    pub const fn new(code: i32) -> Self {
        if code >= 0 && code <= 16 {
            Self(code)
        } else {
            Self::UNKNOWN
        }
    }

    /// The number (`0` for `OK`).
    #[must_use]
    pub const fn as_i32(self) -> i32 {
        self.0
    }

    /// The number as a static string (`"0"`...`"16"`): the `status_code`
    /// metric label, taken without allocating.
    #[must_use]
    pub fn as_label(self) -> &'static str {
        const LABELS: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        // `new` keeps the number within the table.
        LABELS.get(self.0 as usize).copied().unwrap_or("2")
    }

    /// The code's name, `OK` ... `UNAUTHENTICATED`: the value of
    /// `rpc.response.status_code` and, for errors, of `error.type`.
    #[must_use]
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 17] = [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("UNKNOWN")
    }

    /// Whether the code says the server failed (UNKNOWN, DEADLINE_EXCEEDED,
    /// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), which is what marks
    /// a server's span as an error per the OpenTelemetry conventions; the
    /// other non-OK codes are the caller's doing.
    #[must_use]
    pub fn is_server_error(self) -> bool {
        matches!(
            self,
            Self::UNKNOWN
                | Self::DEADLINE_EXCEEDED
                | Self::UNIMPLEMENTED
                | Self::INTERNAL
                | Self::UNAVAILABLE
                | Self::DATA_LOSS
        )
    }
}

#[cfg(test)]
mod tests {
    use super::GrpcCode;

    #[test]
    fn numbers_outside_the_table_are_unknown_and_labels_are_the_numbers() {
        assert_eq!(GrpcCode::new(0).as_label(), "0");
        assert_eq!(GrpcCode::new(16).as_label(), "16");
        assert_eq!(GrpcCode::new(99), GrpcCode::UNKNOWN);
        assert_eq!(GrpcCode::new(-1).as_label(), "2");
        assert_eq!(GrpcCode::new(4).name(), "DEADLINE_EXCEEDED");
        assert_eq!(GrpcCode::new(16).name(), "UNAUTHENTICATED");
    }
}
