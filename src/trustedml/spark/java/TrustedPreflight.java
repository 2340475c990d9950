package org.trustedml.spark;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.apache.spark.network.TransportContext;
import org.apache.spark.network.client.RpcResponseCallback;
import org.apache.spark.network.client.TransportClient;
import org.apache.spark.network.client.TransportClientBootstrap;
import org.apache.spark.network.client.TransportClientFactory;
import org.apache.spark.network.crypto.AuthClientBootstrap;
import org.apache.spark.network.crypto.AuthServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.NoOpRpcHandler;
import org.apache.spark.network.server.TransportServer;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

/**
 * Checks, before a Spark application starts, that a standalone master answers, accepts this
 * job's secret and speaks its RPC cipher: what a SparkContext would otherwise learn only after
 * about a minute, with a misleading error. Usage: {@code TrustedPreflight PROPERTIES HOST PORT};
 * the secret comes from the environment, never from the arguments. {@code TrustedPreflight
 * --self-test} checks the verdicts against Spark's own server side in this JVM (a matching server,
 * one with another secret, one on AES/CTR): a run that loads every class the check needs, from
 * which trustedml.spark._preflight makes the JVM's class-data archive.
 *
 * <p>Exit codes (read by trustedml.spark._preflight): 0 every check passed, 2 internal error,
 * 3 master not answering, 4 the master refused the secret, 5 no answer after authentication (the
 * RPC cipher or the auth engine version differs), 6 the peer took no part in authentication (a
 * master without spark.authenticate, or not a Spark master). One line on stderr says why.
 */
public final class TrustedPreflight {
  static final String ENV_SECRET = "_SPARK_AUTH_SECRET";
  // The user name Spark's own RPC clients authenticate as (SecurityManager.getSaslUser).
  static final String SASL_USER = "sparkSaslUser";
  static final int OK = 0;
  static final int INTERNAL = 2;
  static final int UNREACHABLE = 3;
  static final int AUTH_FAILED = 4;
  static final int NO_ANSWER = 5;
  static final int NOT_AUTHENTICATING = 6;
  // What the master's AuthRpcHandler replies when the client's proof does not verify.
  private static final String REFUSED = "Authentication failed";
  private static final long CONNECT_MS = 3000;
  private static final long ANSWER_MS = 3000;

  private TrustedPreflight() {}

  public static void main(String[] args) {
    int code;
    try {
      code = args.length == 1 && args[0].equals("--self-test") ? selfTest() : check(args);
    } catch (Exception e) {
      System.err.println("preflight: " + firstLine(e));
      code = INTERNAL;
    }
    System.out.flush();
    System.err.flush();
    // Netty's threads are not daemons: leave without waiting for them.
    Runtime.getRuntime().halt(code);
  }

  private static int check(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: TrustedPreflight PROPERTIES HOST PORT | --self-test");
      return INTERNAL;
    }
    String secret = System.getenv(ENV_SECRET);
    if (secret == null || secret.isEmpty()) {
      System.err.println("preflight: " + ENV_SECRET + " is not set");
      return INTERNAL;
    }
    return check(properties(Path.of(args[0])), secret, args[1], Integer.parseInt(args[2]));
  }

  private static TransportConf transportConf(Map<String, String> conf) {
    Map<String, String> timed = new HashMap<>(conf);
    String seconds = (CONNECT_MS / 1000) + "s";
    timed.put("spark.rpc.io.connectionTimeout", seconds);
    timed.put("spark.rpc.io.connectionCreationTimeout", seconds);
    timed.put("spark.network.auth.rpcTimeout", seconds);
    return new TransportConf("rpc", new MapConfigProvider(timed));
  }

  private static SecretKeyHolder holder(String secret) {
    return new SecretKeyHolder() {
      @Override
      public String getSaslUser(String appId) {
        return SASL_USER;
      }

      @Override
      public String getSecretKey(String appId) {
        return secret;
      }
    };
  }

  private static int check(Map<String, String> conf, String secret, String host, int port)
      throws Exception {
    TransportConf transport = transportConf(conf);
    List<TransportClientBootstrap> bootstraps =
        List.of(new AuthClientBootstrap(transport, SASL_USER, holder(secret)));
    try (TransportContext context = new TransportContext(transport, new NoOpRpcHandler());
        TransportClientFactory factory = context.createClientFactory(bootstraps)) {
      TransportClient client;
      try {
        client = factory.createUnmanagedClient(host, port);
      } catch (IOException e) {
        System.err.println("preflight: connect: " + e.getMessage());
        return UNREACHABLE;
      } catch (RuntimeException e) {
        String why = firstLine(e);
        System.err.println("preflight: authentication: " + why);
        return why.contains(REFUSED) ? AUTH_FAILED : NOT_AUTHENTICATING;
      }
      try {
        return answered(client) ? OK : NO_ANSWER;
      } finally {
        client.close();
      }
    }
  }

  /**
   * Whether the master answers one RPC sent after authentication. The bytes are not a valid
   * message: a master that can decrypt them replies with an error; one on another cipher cannot
   * read the frame, so it stays silent or closes the connection.
   */
  private static boolean answered(TransportClient client) throws InterruptedException {
    CompletableFuture<Boolean> reply = new CompletableFuture<>();
    ByteBuffer probe = ByteBuffer.wrap("trusted-ml preflight".getBytes(StandardCharsets.UTF_8));
    client.sendRpc(
        probe,
        new RpcResponseCallback() {
          @Override
          public void onSuccess(ByteBuffer response) {
            reply.complete(true);
          }

          @Override
          public void onFailure(Throwable e) {
            // A closed channel fails the request with an IOException; a reply from the
            // master arrives as a RuntimeException carrying its error text.
            reply.complete(!(e instanceof IOException));
          }
        });
    try {
      return reply.get(ANSWER_MS, TimeUnit.MILLISECONDS);
    } catch (TimeoutException | ExecutionException e) {
      return false;
    }
  }

  /** The verdicts against servers on this JVM: OK when each is the expected one. */
  private static int selfTest() throws Exception {
    Map<String, String> conf = new HashMap<>();
    conf.put("spark.authenticate", "true");
    conf.put("spark.network.crypto.enabled", "true");
    conf.put("spark.network.crypto.cipher", "AES/GCM/NoPadding");
    conf.put("spark.network.crypto.authEngineVersion", "2");
    conf.put("spark.network.crypto.saslFallback", "false");
    String secret = "trusted-ml preflight self-test, not a secret";
    Map<String, String> ctr = new HashMap<>(conf);
    ctr.put("spark.network.crypto.cipher", "AES/CTR/NoPadding");
    int[][] cases = {
      {serve(conf, secret, conf, secret), OK},
      {serve(conf, secret + " (another)", conf, secret), AUTH_FAILED},
      {serve(ctr, secret, conf, secret), NO_ANSWER},
    };
    for (int[] verdict : cases) {
      if (verdict[0] != verdict[1]) {
        System.err.println("preflight: self-test: got " + verdict[0] + ", expected " + verdict[1]);
        return INTERNAL;
      }
    }
    return OK;
  }

  /** The verdict of a check with {@code client} settings against a server on {@code server}. */
  private static int serve(
      Map<String, String> server, String serverSecret, Map<String, String> client, String secret)
      throws Exception {
    TransportConf transport = transportConf(server);
    try (TransportContext context = new TransportContext(transport, new NoOpRpcHandler());
        TransportServer listening =
            context.createServer(
                "127.0.0.1",
                0,
                List.of(new AuthServerBootstrap(transport, holder(serverSecret))))) {
      return check(client, secret, "127.0.0.1", listening.getPort());
    }
  }

  /** The innermost message of {@code e} (a remote error carries the master's stack trace). */
  private static String firstLine(Throwable e) {
    Throwable root = e;
    while (root.getCause() != null && root.getCause() != root) {
      root = root.getCause();
    }
    String text = root.getMessage() == null ? root.toString() : root.getMessage();
    return text.strip().lines().findFirst().orElse(root.getClass().getName());
  }

  private static Map<String, String> properties(Path path) throws IOException {
    Properties props = new Properties();
    try (InputStream in = Files.newInputStream(path)) {
      props.load(in);
    }
    Map<String, String> out = new HashMap<>();
    for (String name : props.stringPropertyNames()) {
      out.put(name, props.getProperty(name));
    }
    return out;
  }
}
