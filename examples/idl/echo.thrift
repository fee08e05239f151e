namespace rs echo

struct SayRequest {
    1: required string message,
}

struct SayReply {
    1: required string message,
    // host:port of the instance that answered
    2: required string served_by,
}

exception EchoError {
    1: required string reason,
}

// Echoes a message back, naming the instance that served it.
service ThriftEcho {
    SayReply say(1: SayRequest request) throws (1: EchoError error),
}
