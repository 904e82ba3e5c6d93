#!/usr/bin/env python3
"""Prints an HS256 JWT: jwt_hs256.py ISSUER SECRET [TTL_SECONDS] (standard library only)."""
import base64, hashlib, hmac, json, sys, time


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: jwt_hs256.py ISSUER SECRET [TTL_SECONDS]")
    iss, secret = sys.argv[1], sys.argv[2].encode()
    ttl = int(sys.argv[3]) if len(sys.argv) > 3 else 600
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"iss": iss, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    print(f"{header}.{claims}.{b64(sig)}")


if __name__ == "__main__":
    main()
