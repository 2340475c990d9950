package org.trustedml.fs;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import javax.crypto.spec.SecretKeySpec;
import org.apache.hadoop.conf.Configuration;

/**
 * Where the tml file system gets data keys: one registry per JVM. The driver installs a
 * {@link Source} (a py4j callback into the job's key store); executors without one start a
 * key agent named by the Configuration ({@code trustedml.fs.agent}). Keys never come from the
 * Configuration, argv, a file or a log; unwrapped keys are cached in this JVM's memory only.
 */
public final class TmlKeys {
  /** Configuration key of the agent descriptor (JSON: broker URL, CA, job; nothing secret). */
  public static final String AGENT = "trustedml.fs.agent";
  /** Configuration key of the Python interpreter that runs the agent. */
  public static final String AGENT_PYTHON = "trustedml.fs.agent.python";

  static final byte OK = 1;
  private static final int MAX_CACHED = 4096;

  /**
   * A key source. Replies: first byte 1 then the payload, or first byte 0 then a UTF-8 message
   * (never a secret). {@code unwrap}'s payload is the 32-byte data key; {@code generate}'s is
   * uint16 BE len(wrapped) || wrapped || the 32-byte data key.
   */
  public interface Source {
    byte[] unwrap(String keyId, byte[] wrapped);

    byte[] generate(String keyId);
  }

  /** A fresh data key: its wrapped form (for the header) and the key itself. */
  static final class Generated {
    final byte[] wrapped;
    final SecretKeySpec key;

    Generated(byte[] wrapped, SecretKeySpec key) {
      this.wrapped = wrapped;
      this.key = key;
    }
  }

  private static final class CacheKey {
    private final String keyId;
    private final byte[] wrapped;

    CacheKey(String keyId, byte[] wrapped) {
      this.keyId = keyId;
      this.wrapped = wrapped;
    }

    @Override
    public boolean equals(Object other) {
      return other instanceof CacheKey
          && ((CacheKey) other).keyId.equals(keyId)
          && Arrays.equals(((CacheKey) other).wrapped, wrapped);
    }

    @Override
    public int hashCode() {
      return keyId.hashCode() * 31 + Arrays.hashCode(wrapped);
    }
  }

  private static volatile Source installed;
  private static final Map<CacheKey, SecretKeySpec> CACHE = new ConcurrentHashMap<>();

  private TmlKeys() {}

  /**
   * Make {@code source} this JVM's key source (the driver's); clears the key cache and starts
   * the once-per-JVM AES-GCM warm-up.
   */
  public static synchronized void install(Source source) {
    installed = source;
    CACHE.clear();
    // Keys are handed over just before Spark reads: give the JIT a head start.
    TmlChunkCipher.warmUp();
  }

  /** Forget the installed source and every cached key, and stop this JVM's key agent. */
  public static synchronized void uninstall() {
    installed = null;
    CACHE.clear();
    TmlAgent.stopRunning();
  }

  /** Whether a source is installed in this JVM (for the Python side's checks). */
  public static boolean isInstalled() {
    return installed != null;
  }

  /** Forget every cached data key (the installed source stays). */
  public static void clearCache() {
    CACHE.clear();
  }

  private static Source source(Configuration conf, String name) throws IOException {
    Source found = installed;
    if (found != null) {
      return found;
    }
    String descriptor = conf == null ? null : conf.get(AGENT);
    if (descriptor != null && !descriptor.isEmpty()) {
      return TmlAgent.get(descriptor, conf.get(AGENT_PYTHON, "python3"));
    }
    throw new IOException(
        name + ": no trusted-ml keys in this JVM (read and write through "
            + "trustedml.spark.read_encrypted / write_encrypted, which hand the JVM the job's keys)");
  }

  // A py4j callback fails with an unchecked exception (the driver's Python went away).
  private static IOException unreachable(String name, RuntimeException e) {
    return new IOException(name + ": the key source failed: " + e.getMessage(), e);
  }

  private static byte[] payload(byte[] reply, String name) throws IOException {
    if (reply == null || reply.length == 0) {
      throw new IOException(name + ": the key source gave no reply");
    }
    if (reply[0] != OK) {
      String why = new String(reply, 1, reply.length - 1, StandardCharsets.UTF_8);
      throw new IOException(name + ": " + why);
    }
    return reply;
  }

  private static SecretKeySpec keyAt(byte[] reply, int offset, String name) throws IOException {
    try {
      if (reply.length - offset != TmlFormat.DEK_SIZE) {
        throw new IOException(
            name + ": the key source returned a data key of " + (reply.length - offset)
                + " bytes, expected " + TmlFormat.DEK_SIZE);
      }
      return new SecretKeySpec(reply, offset, TmlFormat.DEK_SIZE, "AES");
    } finally {
      Arrays.fill(reply, (byte) 0);
    }
  }

  private static void remember(CacheKey key, SecretKeySpec spec) {
    // Each file has its own data key; a bound keeps a long job's cache small.
    if (CACHE.size() >= MAX_CACHED) {
      CACHE.clear();
    }
    CACHE.put(key, spec);
  }

  /** The data key of a file whose header holds {@code wrapped} under {@code keyId}. */
  static SecretKeySpec unwrap(Configuration conf, String name, String keyId, byte[] wrapped)
      throws IOException {
    CacheKey cacheKey = new CacheKey(keyId, wrapped.clone());
    SecretKeySpec cached = CACHE.get(cacheKey);
    if (cached != null) {
      return cached;
    }
    Source from = source(conf, name);
    byte[] reply;
    try {
      reply = from.unwrap(keyId, wrapped.clone());
    } catch (RuntimeException e) {
      throw unreachable(name, e);
    }
    reply = payload(reply, name);
    SecretKeySpec spec = keyAt(reply, 1, name);
    remember(cacheKey, spec);
    return spec;
  }

  /** A fresh data key wrapped under {@code keyId}, for a new file. */
  static Generated generate(Configuration conf, String name, String keyId) throws IOException {
    Source from = source(conf, name);
    byte[] reply;
    try {
      reply = from.generate(keyId);
    } catch (RuntimeException e) {
      throw unreachable(name, e);
    }
    reply = payload(reply, name);
    if (reply.length < 3) {
      Arrays.fill(reply, (byte) 0);
      throw new IOException(name + ": the key source's reply is malformed");
    }
    int wlen = ((reply[1] & 0xff) << 8) | (reply[2] & 0xff);
    if (3 + wlen > reply.length) {
      Arrays.fill(reply, (byte) 0);
      throw new IOException(name + ": the key source's reply is malformed");
    }
    byte[] wrapped = Arrays.copyOfRange(reply, 3, 3 + wlen);
    SecretKeySpec spec = keyAt(reply, 3 + wlen, name);
    remember(new CacheKey(keyId, wrapped.clone()), spec);
    return new Generated(wrapped, spec);
  }
}
