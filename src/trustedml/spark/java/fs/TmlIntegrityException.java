package org.trustedml.fs;

import java.io.IOException;

/**
 * A trusted-ml file failed validation: bad magic, a malformed or truncated header, a
 * truncated body, or a chunk that failed authentication. Messages equal those of
 * trustedml.hazmat.framing and name the physical file (and the chunk).
 */
public class TmlIntegrityException extends IOException {
  private static final long serialVersionUID = 1L;

  public TmlIntegrityException(String message) {
    super(message);
  }
}
