package org.trustedml.k8s;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import io.fabric8.kubernetes.api.model.ConfigMap;
import io.fabric8.kubernetes.api.model.ConfigMapVolumeSource;
import io.fabric8.kubernetes.api.model.Container;
import io.fabric8.kubernetes.api.model.ContainerBuilder;
import io.fabric8.kubernetes.api.model.HasMetadata;
import io.fabric8.kubernetes.api.model.KeyToPath;
import io.fabric8.kubernetes.api.model.Pod;
import io.fabric8.kubernetes.api.model.PodBuilder;
import io.fabric8.kubernetes.api.model.Volume;
import io.fabric8.kubernetes.client.Config;
import io.fabric8.kubernetes.client.ConfigBuilder;
import io.fabric8.kubernetes.client.KubernetesClient;
import io.fabric8.kubernetes.client.KubernetesClientBuilder;
import io.fabric8.kubernetes.client.http.HttpClient;
import io.fabric8.kubernetes.client.utils.Serialization;
import java.io.File;
import java.io.IOException;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.apache.spark.SecurityManager;
import org.apache.spark.SparkConf;
import org.apache.spark.deploy.SparkSubmit;
import org.apache.spark.deploy.SparkSubmitArguments;
import org.apache.spark.deploy.k8s.Constants$;
import org.apache.spark.deploy.k8s.KubernetesConf;
import org.apache.spark.deploy.k8s.KubernetesDriverConf;
import org.apache.spark.deploy.k8s.KubernetesDriverSpec;
import org.apache.spark.deploy.k8s.KubernetesExecutorConf;
import org.apache.spark.deploy.k8s.KubernetesExecutorSpec;
import org.apache.spark.deploy.k8s.SparkPod;
import org.apache.spark.deploy.k8s.submit.ClientArguments;
import org.apache.spark.deploy.k8s.submit.KubernetesClientUtils;
import org.apache.spark.deploy.k8s.submit.KubernetesDriverBuilder;
import org.apache.spark.internal.config.package$;
import org.apache.spark.resource.ResourceProfile$;
import org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBuilder;
import scala.Option;
import scala.Tuple4;
import scala.collection.immutable.Seq;
import scala.jdk.javaapi.CollectionConverters;

/**
 * The driver and executor pods Spark 4's own Kubernetes code builds for a spark-submit
 * command line, with no cluster: trusted-ml checks its rendered configuration with it.
 *
 * <p>Usage: {@code PodSpecs [--auth-secret-file F] SUBMIT.json...}; each SUBMIT.json holds
 * the would-be spark-submit argv as a JSON list (its first item the program). For each, in
 * order, one line on stdout holds one JSON object: {@code {"driver": {"pod", "container",
 * "systemProperties", "preResources", "resources", "confMap"}, "executor": {"pod",
 * "container", "resources"}}}. Any failure: exit 2 with one line on stderr starting with
 * {@code pod-specs: }.
 *
 * <p>What runs is what spark-submit runs: SparkSubmit's own argument parsing and
 * environment preparation (the properties file, --master k8s://..., cluster mode), then
 * KubernetesClientApplication's steps: ClientArguments, KubernetesConf.createDriverConf,
 * KubernetesDriverBuilder.buildFromFeatures and Client.run's driver ConfigMap and mount,
 * stopping where Client.run would call the API server. The executor is then built as the
 * driver's scheduler backend would: from the submit conf plus the driver's system
 * properties, with the executor pod template read from the ConfigMap Spark made of it.
 *
 * <p>The fabric8 client is given an HTTP layer that refuses every request: Spark uses the
 * client here only to parse pod templates, and any attempt to reach an API server fails
 * the run, naming it.
 */
public final class PodSpecs {
  private static final String PREFIX = "pod-specs: ";
  private static final String K8S_SUBMIT_CLASS =
      "org.apache.spark.deploy.k8s.submit.KubernetesClientApplication";
  private static final ObjectMapper JSON = new ObjectMapper();

  private PodSpecs() {}

  /** Raised for a refused input; its message is the one line printed. */
  static final class Refused extends RuntimeException {
    Refused(String message) {
      super(message);
    }
  }

  public static void main(String[] argv) {
    try {
      run(argv);
    } catch (Throwable exc) {
      System.err.println(PREFIX + describe(exc));
      System.exit(2);
    }
    System.exit(0);
  }

  private static void run(String[] argv) throws IOException {
    Path authFile = null;
    List<Path> submits = new ArrayList<>();
    for (int i = 0; i < argv.length; i++) {
      if (argv[i].equals("--auth-secret-file") && i + 1 < argv.length) {
        authFile = Path.of(argv[++i]);
      } else if (argv[i].startsWith("--")) {
        throw new Refused("unknown option " + argv[i]);
      } else {
        submits.add(Path.of(argv[i]));
      }
    }
    if (submits.isEmpty()) {
      throw new Refused("usage: PodSpecs [--auth-secret-file F] SUBMIT.json...");
    }
    List<String> lines = new ArrayList<>();
    for (Path submit : submits) {
      try {
        lines.add(JSON.writeValueAsString(specs(readArgv(submit), authFile)));
      } catch (Exception exc) {
        // Scala code throws checked exceptions (SparkException) undeclared.
        throw new Refused(submit + ": " + describe(exc));
      }
    }
    for (String line : lines) {
      System.out.println(line);
    }
  }

  private static String[] readArgv(Path submit) throws IOException {
    JsonNode node = JSON.readTree(submit.toFile());
    if (node == null || !node.isArray() || node.size() < 2) {
      throw new Refused("expected a JSON list (the spark-submit argv)");
    }
    List<String> args = new ArrayList<>();
    // The first item is the program (spark-submit); SparkSubmit parses what follows.
    for (int i = 1; i < node.size(); i++) {
      if (!node.get(i).isTextual()) {
        throw new Refused("item " + i + " of the argv is not a string");
      }
      args.add(node.get(i).asText());
    }
    return args.toArray(new String[0]);
  }

  private static ObjectNode specs(String[] args, Path authFile) throws IOException {
    SparkSubmit submit = new SparkSubmit();
    SparkSubmitArguments parsed = submit.parseArguments(args);
    // (child args, child classpath, conf, child main class), as spark-submit computes them.
    Tuple4<Seq<String>, Seq<String>, SparkConf, String> env =
        submit.prepareSubmitEnvironment(parsed, Option.empty());
    if (!K8S_SUBMIT_CLASS.equals(env._4())) {
      throw new Refused(
          "spark-submit would run "
              + env._4()
              + ", not Kubernetes cluster submission (--master k8s://... --deploy-mode cluster)");
    }
    SparkConf conf = env._3();
    String[] childArgs = CollectionConverters.asJava(env._1()).toArray(new String[0]);
    ClientArguments client = ClientArguments.fromCommandLineArgs(childArgs);
    String appId = KubernetesConf.getKubernetesAppId();
    KubernetesDriverConf driverConf =
        KubernetesConf.createDriverConf(
            conf,
            appId,
            client.mainAppResource(),
            client.mainClass(),
            client.driverArgs(),
            client.proxyUser());
    Path tmp = Files.createTempDirectory("trustedml-podspecs-");
    try (KubernetesClient k8s = offlineClient(driverConf.namespace())) {
      KubernetesDriverSpec driver =
          new KubernetesDriverBuilder().buildFromFeatures(driverConf, k8s);
      ObjectNode out = JSON.createObjectNode();
      Pod driverPod = driverNode(out.putObject("driver"), driverConf, driver);
      executorNode(out.putObject("executor"), conf, driver, driverPod, appId, k8s, tmp, authFile);
      return out;
    } finally {
      deleteTree(tmp);
    }
  }

  /** The driver as Client.run would create it (its conf ConfigMap mounted). */
  private static Pod driverNode(
      ObjectNode out, KubernetesDriverConf conf, KubernetesDriverSpec spec) throws IOException {
    Constants$ names = Constants$.MODULE$;
    String configMapName = KubernetesClientUtils.configMapNameDriver();
    scala.collection.immutable.Map<String, String> files =
        KubernetesClientUtils.buildSparkConfDirFilesMap(
            configMapName, conf.sparkConf(), spec.systemProperties());
    Map<String, String> withNamespace = new TreeMap<>(CollectionConverters.asJava(files));
    withNamespace.put("spark.kubernetes.namespace", conf.namespace());
    ConfigMap confMap =
        KubernetesClientUtils.buildConfigMapJava(configMapName, withNamespace, Map.of());
    Container container =
        new ContainerBuilder(spec.pod().container())
            .addNewEnv()
            .withName(names.ENV_SPARK_CONF_DIR())
            .withValue(names.SPARK_CONF_DIR_INTERNAL())
            .endEnv()
            .addNewVolumeMount()
            .withName(names.SPARK_CONF_VOLUME_DRIVER())
            .withMountPath(names.SPARK_CONF_DIR_INTERNAL())
            .endVolumeMount()
            .build();
    Pod pod =
        new PodBuilder(spec.pod().pod())
            .editSpec()
            .addToContainers(container)
            .addNewVolume()
            .withName(names.SPARK_CONF_VOLUME_DRIVER())
            .withNewConfigMap()
            .withItems(
                KubernetesClientUtils.buildKeyToPathObjectsJava(CollectionConverters.asJava(files)))
            .withName(configMapName)
            .endConfigMap()
            .endVolume()
            .endSpec()
            .build();
    out.set("pod", model(pod));
    out.set("container", model(container));
    Map<String, String> properties = new TreeMap<>(spec.getSystemPropertiesAsJavaMap());
    out.set("systemProperties", JSON.valueToTree(properties));
    out.set("preResources", models(spec.getDriverPreKubernetesResourcesAsJavaList()));
    out.set("resources", models(spec.getDriverKubernetesResourcesAsJavaList()));
    out.set("confMap", model(confMap));
    return pod;
  }

  /** One executor pod as the driver's allocator would ask for it. */
  private static void executorNode(
      ObjectNode out,
      SparkConf submitConf,
      KubernetesDriverSpec driver,
      Pod driverPod,
      String appId,
      KubernetesClient k8s,
      Path tmp,
      Path authFile)
      throws IOException {
    // The driver runs with the submit conf plus the system properties Spark gave it.
    SparkConf conf = submitConf.clone();
    driver.getSystemPropertiesAsJavaMap().forEach(conf::set);
    localExecutorTemplate(conf, driver, tmp);
    ResourceProfile$ profiles = ResourceProfile$.MODULE$;
    KubernetesExecutorConf executorConf =
        KubernetesConf.createExecutorConf(
            conf, "1", appId, Option.apply(driverPod), profiles.DEFAULT_RESOURCE_PROFILE_ID());
    SecurityManager security = driverSecurity(conf, tmp, authFile);
    KubernetesExecutorSpec spec =
        new KubernetesExecutorBuilder()
            .buildFromFeatures(
                executorConf, security, k8s, profiles.getOrCreateDefaultProfile(conf));
    SparkPod pod = spec.pod();
    Pod withContainer =
        new PodBuilder(pod.pod())
            .editOrNewSpec()
            .addToContainers(pod.container())
            .endSpec()
            .build();
    out.set("pod", model(withContainer));
    out.set("container", model(pod.container()));
    out.set("resources", models(CollectionConverters.asJava(spec.executorKubernetesResources())));
  }

  /**
   * In the driver pod the executor template is the file Spark mounted from its ConfigMap;
   * here that path does not exist, so the same ConfigMap's text is written to a local file
   * and the conf points there (nothing else about the executor changes).
   */
  private static void localExecutorTemplate(SparkConf conf, KubernetesDriverSpec driver, Path tmp)
      throws IOException {
    String key = "spark.kubernetes.executor.podTemplateFile";
    if (!conf.contains(key) || new File(conf.get(key)).isFile()) {
      return;
    }
    String name = new File(conf.get(key)).getName();
    Map<String, String> keyOfMap = new TreeMap<>();
    for (Volume volume : driver.pod().pod().getSpec().getVolumes()) {
      ConfigMapVolumeSource source = volume.getConfigMap();
      if (source != null && source.getItems() != null) {
        for (KeyToPath item : source.getItems()) {
          if (name.equals(item.getPath())) {
            keyOfMap.put(source.getName(), item.getKey());
          }
        }
      }
    }
    List<HasMetadata> resources =
        new ArrayList<>(driver.getDriverPreKubernetesResourcesAsJavaList());
    resources.addAll(driver.getDriverKubernetesResourcesAsJavaList());
    for (HasMetadata resource : resources) {
      String dataKey = keyOfMap.get(resource.getMetadata().getName());
      if (resource instanceof ConfigMap map
          && dataKey != null
          && map.getData().containsKey(dataKey)) {
        Path local = tmp.resolve(name);
        Files.writeString(local, map.getData().get(dataKey), StandardCharsets.UTF_8);
        conf.set(key, local.toString());
        return;
      }
    }
    throw new Refused(
        "the executor pod template " + conf.get(key) + " is in no ConfigMap Spark made");
  }

  /**
   * The driver's SecurityManager, initialised as SparkEnv does. With
   * spark.authenticate.secret.file set the driver reads its secret from that in-pod path,
   * absent here: the manager alone gets a copy of the conf whose driver file is
   * {@code authFile} (or a fresh random secret in a private temporary file). The executor
   * builder still sees the untouched conf, so it decides about _SPARK_AUTH_SECRET exactly
   * as in the pod, and were it to put the secret in the pod spec, the value would be there
   * to find.
   */
  private static SecurityManager driverSecurity(SparkConf conf, Path tmp, Path authFile)
      throws IOException {
    package$ config = package$.MODULE$;
    SparkConf copy = conf.clone();
    if (copy.get(config.AUTH_SECRET_FILE_DRIVER()).isDefined()) {
      Path file = authFile;
      if (file == null) {
        file = tmp.resolve("auth-secret");
        Files.createFile(
            file,
            PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        byte[] secret = new byte[32];
        new SecureRandom().nextBytes(secret);
        Files.writeString(file, HexFormat.of().formatHex(secret), StandardCharsets.US_ASCII);
      }
      copy.set("spark.authenticate.secret.driver.file", file.toAbsolutePath().toString());
    }
    SecurityManager security =
        new SecurityManager(copy, Option.empty(), config.AUTH_SECRET_FILE_DRIVER());
    security.initializeAuth();
    return security;
  }

  /** A fabric8 client that parses and serialises but whose every request fails. */
  static KubernetesClient offlineClient(String namespace) {
    Config config =
        new ConfigBuilder(Config.empty())
            .withMasterUrl("https://127.0.0.1:1/")
            .withNamespace(namespace)
            .build();
    HttpClient.Factory factory = () -> noNetworkBuilder();
    return new KubernetesClientBuilder().withConfig(config).withHttpClientFactory(factory).build();
  }

  private static HttpClient.Builder noNetworkBuilder() {
    HttpClient client =
        (HttpClient)
            Proxy.newProxyInstance(
                PodSpecs.class.getClassLoader(),
                new Class<?>[] {HttpClient.class},
                (self, method, args) -> noNetwork(self, method, args));
    Object[] builder = new Object[1];
    builder[0] =
        Proxy.newProxyInstance(
            PodSpecs.class.getClassLoader(),
            new Class<?>[] {HttpClient.Builder.class},
            (self, method, args) -> {
              if (method.getName().equals("build")) {
                return client;
              }
              if (method.getReturnType().isInstance(self)) {
                return self;
              }
              return objectMethod(self, method, args);
            });
    return (HttpClient.Builder) builder[0];
  }

  private static Object noNetwork(Object self, Method method, Object[] args) {
    switch (method.getName()) {
      case "close":
        return null;
      case "isClosed":
        return false;
      default:
        Object plain = objectMethod(self, method, args);
        if (plain != null) {
          return plain;
        }
        throw new Refused(
            "Spark's Kubernetes code tried to reach the API server (HttpClient."
                + method.getName()
                + "); this check never connects");
    }
  }

  private static Object objectMethod(Object self, Method method, Object[] args) {
    switch (method.getName()) {
      case "toString":
        return "no-network http client";
      case "hashCode":
        return System.identityHashCode(self);
      case "equals":
        return self == args[0];
      default:
        return null;
    }
  }

  private static JsonNode model(Object object) throws IOException {
    return JSON.readTree(Serialization.asJson(object));
  }

  private static ArrayNode models(List<? extends HasMetadata> objects) throws IOException {
    ArrayNode array = JSON.createArrayNode();
    for (HasMetadata object : objects) {
      array.add(model(object));
    }
    return array;
  }

  /** One line: the exception and its causes (Spark wraps the telling one). */
  static String describe(Throwable exc) {
    StringBuilder line = new StringBuilder();
    for (Throwable t = exc; t != null; t = t.getCause()) {
      if (t instanceof InvocationTargetException) {
        continue;
      }
      String message = t.getMessage();
      String part =
          t instanceof Refused
              ? message
              : t.getClass().getSimpleName() + (message == null ? "" : ": " + message);
      if (line.indexOf(part) < 0) {
        line.append(line.length() == 0 ? "" : " <- ").append(part);
      }
      if (t.getCause() == t) {
        break;
      }
    }
    return line.toString().replaceAll("\\s+", " ").trim();
  }

  private static void deleteTree(Path root) {
    try (Stream<Path> paths = Files.walk(root)) {
      paths.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    } catch (IOException exc) {
      // A temporary directory left behind holds no secret the caller did not give.
    }
  }
}
