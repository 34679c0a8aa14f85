//! A function's permissions as the template gives them: `Policies` (SAM policy templates,
//! managed policy names, inline documents, intrinsics resolved) or the template role named
//! by `Role`.

use std::path::Path;

use esb_template::{parse_str, Overrides};
use serde_json::json;

const TEMPLATE: &str = r#"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Stage: { Type: String, Default: dev }
Resources:
  Orders:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "orders-${Stage}"
      AttributeDefinitions: [{ AttributeName: id, AttributeType: S }]
      KeySchema: [{ AttributeName: id, KeyType: HASH }]
  Reader:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.11
      Handler: app.handler
      CodeUri: src/
      Policies:
        - DynamoDBReadPolicy:
            TableName: !Ref Orders
        - AWSLambdaBasicExecutionRole
        - Statement:
            - Effect: Allow
              Action: s3:GetObject
              Resource: !Sub "arn:aws:s3:::assets-${Stage}/*"
  Single:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.11
      Handler: app.handler
      CodeUri: src/
      Policies: AmazonS3ReadOnlyAccess
  WithRole:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.11
      Handler: app.handler
      CodeUri: src/
      Role: !GetAtt Custom.Arn
      Policies: [AdministratorAccess]
  Custom:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {}
      ManagedPolicyArns: [arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess]
      Policies:
        - PolicyName: write
          PolicyDocument:
            Statement:
              - Effect: Allow
                Action: [dynamodb:PutItem]
                Resource: !GetAtt Orders.Arn
  Plain:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.11
      Handler: app.handler
      CodeUri: src/
"#;

#[test]
fn policies_and_roles_come_resolved() {
    let t = parse_str(TEMPLATE, Path::new("/tmp"), &Overrides::default()).unwrap();
    let f = |id: &str| {
        t.functions
            .iter()
            .find(|f| f.logical_id == id)
            .unwrap()
            .policies
            .clone()
    };
    assert_eq!(
        f("Reader").unwrap(),
        vec![
            json!({"DynamoDBReadPolicy": {"TableName": "orders-dev"}}),
            json!("AWSLambdaBasicExecutionRole"),
            json!({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::assets-dev/*"}]}),
        ]
    );
    assert_eq!(f("Single").unwrap(), vec![json!("AmazonS3ReadOnlyAccess")]);
    // With Role, SAM ignores Policies: the role's documents and managed policies count.
    let role = f("WithRole").unwrap();
    assert_eq!(role.len(), 2, "{role:?}");
    assert_eq!(
        role[0]["Statement"][0]["Resource"],
        "arn:aws:dynamodb:ap-northeast-1:000000000000:table/orders-dev"
    );
    assert_eq!(
        role[1],
        json!("arn:aws:iam::aws:policy/AmazonDynamoDBReadOnlyAccess")
    );
    assert_eq!(f("Plain"), None);
}
